"""Processors: the pure reward rules and the Faust shell around them."""

from schemas import _compiled

_compiled.activate(__import__(__name__))
