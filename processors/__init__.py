"""Processors: the pure reward rules and the Faust shell around them."""
