"""Side-by-side benchmarks of postoffice and Dovecot (issue 6); never part of ``make test``."""
