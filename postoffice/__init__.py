"""postoffice: a POP3 server and a POP3 mail fetcher."""

__version__ = "0.1.0"
