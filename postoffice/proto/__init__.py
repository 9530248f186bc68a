"""Pure POP3: framing, commands, replies, state tables and the connection machines.

Nothing in this package does I/O, reads a clock, logs, or imports asyncio, socket, ssl, os,
time or logging: bytes go in, events and bytes come out.
"""
