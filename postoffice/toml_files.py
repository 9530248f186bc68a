"""Reading a TOML file with errors that say what is wrong with it.

Shared by the server's and the fetcher's configuration; it imports nothing else of the
package, so the fetcher can read its account file without loading the server's settings.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from postoffice.errors import ConfigError

__all__ = ["read_toml"]


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file's contents; ConfigError saying what is wrong with the file."""
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: {what} not found") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from error
