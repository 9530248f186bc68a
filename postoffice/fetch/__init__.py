"""The POP3 user agent: ``postoffice fetch``.

``config`` reads the account file; ``transport`` opens the connection (TLS, STLS, pins) and
drives the pure ``proto.client`` machine; ``auth`` logs in (through ``postoffice.sasl``);
``session`` runs one POP3 session in the durability order its docstring gives; ``delivery``
(Maildir) and ``spooled`` (mbox, MDA) put messages down; ``journal`` remembers which unique
ids were delivered and deleted; ``fingerprint`` recognises messages after a server
renumbered them; ``importers`` read fetchmail, getmail and mpop state; ``runner`` fetches
several accounts at once under a lock each; ``daemon`` polls on a schedule; ``cli`` is the
command.
"""
