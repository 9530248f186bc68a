"""Moving users from another POP3 server without clients downloading everything again."""
