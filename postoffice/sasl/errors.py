"""The SASL branch of the exception tree (see postoffice.errors for the whole tree).

::

    ProtocolError
    ├── LocalProtocolError
    │   └── SaslStateError                  a mechanism was driven out of turn (our bug)
    └── RemoteProtocolError
        ├── MalformedSaslError              peer data breaks base64 or the mechanism's syntax
        ├── UnknownMechanismError           a mechanism name that is not enabled
        └── ServerProofError                the server failed to prove it knows the password

A wrong password is not an exception: it is a ``Failure`` outcome. Exception text is for
logs; it never contains a password, a token or a SCRAM proof, and never goes on the wire.
"""

from __future__ import annotations

from postoffice.errors import LocalProtocolError, RemoteProtocolError


class SaslStateError(LocalProtocolError):
    """A mechanism method was called in a state that does not allow it."""


class MalformedSaslError(RemoteProtocolError):
    """The peer sent bad base64, or data that breaks the mechanism's grammar."""


class UnknownMechanismError(RemoteProtocolError):
    """The name of a SASL mechanism that is unknown or not enabled here."""


class ServerProofError(RemoteProtocolError):
    """SCRAM: the server's signature is wrong or missing, so the server is not authentic."""
