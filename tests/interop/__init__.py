"""The real server on loopback, driven by real POP3 clients we did not write."""
