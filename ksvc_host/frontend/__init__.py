"""Front ends over an instance: blocking, asyncio, batch and raw (DESIGN section 6)."""
