"""Front ends over an instance: blocking, asyncio, batch and raw (docs/design.md §6)."""
