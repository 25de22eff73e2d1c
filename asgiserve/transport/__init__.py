"""The asyncio layer: connections (asyncio.Protocol), socket binding, shared server state."""
