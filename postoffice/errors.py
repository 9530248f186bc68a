"""The whole exception tree of postoffice.

::

    PostofficeError
    ├── ConfigError (ValueError)            a configuration file or value is wrong; names the key
    ├── ProtocolError                       a POP3 protocol rule was broken
    │   ├── LocalProtocolError              our own code misused a protocol machine (a bug)
    │   └── RemoteProtocolError             the peer sent something the RFCs do not allow
    ├── AuthError                           user database trouble (not a wrong password)
    │   ├── PasswdFileError                 the passwd-file cannot be read or parsed
    │   ├── UnknownSchemeError              a password hash in an unknown scheme: fail closed
    │   └── InvalidUsernameError (ValueError) a user name outside the allow-list
    ├── StorageError (OSError)              a maildrop could not be read or changed
    │   ├── MaildropInUseError              another session holds the maildrop lock
    │   └── MessageVanishedError            a message in the snapshot is gone from storage
    └── DeliveryError                       a message could not be put into a maildrop
        ├── TemporaryDeliveryError          try again later (disk full, I/O error)
        └── UnknownRecipientError           no such user

Exception text is for logs and the command line; it never goes on the wire. Replies to
POP3 clients are fixed wording chosen by the protocol core.
"""

from __future__ import annotations


class PostofficeError(Exception):
    """Base of every error postoffice raises on purpose."""


class ConfigError(PostofficeError, ValueError):
    """A configuration value is wrong. The message names the key and the problem."""


class ProtocolError(PostofficeError):
    """A POP3 protocol rule was broken."""


class LocalProtocolError(ProtocolError):
    """Our own code called a protocol machine in a state that does not allow it."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that the POP3 RFCs do not allow."""


class AuthError(PostofficeError):
    """The user database could not answer (not: the password was wrong)."""


class PasswdFileError(AuthError):
    """The passwd-file cannot be read or has a malformed line."""


class UnknownSchemeError(AuthError):
    """A stored password uses a scheme postoffice does not know; such a user cannot log in."""


class InvalidUsernameError(AuthError, ValueError):
    """A user name contains characters outside the allow-list."""


class StorageError(PostofficeError, OSError):
    """A maildrop could not be read or changed."""


class MaildropInUseError(StorageError):
    """Another session holds the exclusive lock on this maildrop."""


class MessageVanishedError(StorageError):
    """A message listed in the session's snapshot no longer exists in storage."""


class DeliveryError(PostofficeError):
    """A message could not be delivered."""


class TemporaryDeliveryError(DeliveryError):
    """Delivery failed for a reason that may pass (disk full, I/O error): try again later."""


class UnknownRecipientError(DeliveryError):
    """The recipient is not a known user."""
