"""The asyncio server around the pure protocol core."""
