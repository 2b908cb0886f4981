"""Schemas: framework-free records and codecs (no faust, no aiohttp imports)."""
