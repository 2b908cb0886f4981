"""Schemas: framework-free records and codecs (no faust, no aiohttp imports)."""

from schemas import _compiled

_compiled.activate(__import__(__name__))
