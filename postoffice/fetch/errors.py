"""The fetcher's errors, under ``postoffice.errors``.

::

    PostofficeError
    └── FetchError                              one account could not be fetched
        ├── FetchConnectionError (ConnectionError)  cannot connect, or the connection broke
        │   └── CertificateError                 TLS verification or fingerprint pin failed
        ├── FetchTimeoutError (TimeoutError)    the server stalled
        ├── LoginError                          the server refused our credentials
        ├── ServerRefusedError                  ``-ERR`` where the session needs ``+OK``
        ├── PasswordCommandError                ``password_command`` failed
        ├── KeyringError                        no password in the system keyring
        ├── DeliveryFailedError                 the local destination refused a message
        └── AccountLockedError                  another fetcher runs this account now

``RemoteProtocolError`` (from ``postoffice.errors``) means the server broke POP3 itself.
Messages name the account's setting to change wherever one would help.
"""

from __future__ import annotations

from postoffice.errors import PostofficeError


class FetchError(PostofficeError):
    """One account could not be fetched (completely)."""


class FetchConnectionError(FetchError, ConnectionError):
    """The connection could not be made, or it broke during the session."""


class CertificateError(FetchConnectionError):
    """The server's certificate failed verification or the fingerprint pin."""


class FetchTimeoutError(FetchError, TimeoutError):
    """The server did not answer within the account's ``timeout``."""


class LoginError(FetchError):
    """The server rejected the credentials (or offers no mechanism we may use)."""


class ServerRefusedError(FetchError):
    """The server answered ``-ERR`` to a command the session cannot do without."""


class PasswordCommandError(FetchError):
    """``password_command`` exited non-zero or printed nothing."""


class KeyringError(FetchError):
    """``password_keyring``: the system keyring has no such password or cannot be read."""


class DeliveryFailedError(FetchError):
    """The destination could not take a message (MDA exit status, mbox lock, disk)."""


class AccountLockedError(FetchError):
    """Another fetcher holds this account's lock."""
