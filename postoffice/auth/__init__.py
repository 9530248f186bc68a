"""Users: the passwd-file database, password schemes and login throttling."""
