"""The POP3 user agent: ``postoffice fetch``.

``config`` reads the account file, ``session`` runs one POP3 session on the pure
``proto.client`` machine, ``delivery`` puts messages into a Maildir, ``journal`` remembers
which unique ids were delivered and deleted, ``runner`` fetches several accounts at once
under a lock each, and ``cli`` is the command. Durability order: see ``session``.
"""
