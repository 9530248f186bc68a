"""Coverage-guided fuzzing of whole sessions with atheris (libFuzzer) driving Hypothesis.

``make fuzz`` runs this when atheris is installed::

    python -m tests.fuzz.atheris_main -max_total_time=600 var/fuzz/corpus

libFuzzer mutates byte strings and keeps those that reach new code in ``postoffice``
(the only instrumented package); Hypothesis turns each byte string into a session
(``tests/fuzz/sessions.py``) through ``fuzz_one_input``, and every invariant is checked as
in the normal test. A failing input is written by libFuzzer as ``crash-*`` (under
``-artifact_prefix``) and Hypothesis prints the session it decoded it into. Any
libFuzzer flag works (``-runs=N``, ``-jobs=N``, ``-dict=...``).
"""

from __future__ import annotations

import importlib
import sys

# Imported by name: atheris is optional (``make fuzz`` installs it), so type checking
# must not need it.
atheris = importlib.import_module("atheris")

with atheris.instrument_imports(include=["postoffice"]):
    import postoffice.proto.commands
    import postoffice.proto.framing
    import postoffice.proto.replies
    import postoffice.proto.server
    import postoffice.sasl.framing  # noqa: F401 - imported to be instrumented


#: Hypothesis needs a few hundred bytes for a session of a dozen commands; libFuzzer's
#: default starts much smaller and grows slowly.
DEFAULT_FLAGS = ["-max_len=16384", "-len_control=0"]


def main() -> None:
    # After the instrumented imports above, so the test module finds them already loaded.
    from tests.fuzz.test_server_sessions import test_whole_sessions_keep_the_invariants as test

    fuzz_one_input = test.hypothesis.fuzz_one_input  # type: ignore[attr-defined]
    given = {flag.split("=", 1)[0] for flag in sys.argv[1:] if flag.startswith("-")}
    flags = [flag for flag in DEFAULT_FLAGS if flag.split("=", 1)[0] not in given]
    atheris.Setup([*sys.argv, *flags], fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
