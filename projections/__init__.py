"""Projections: commands out of the system, replay and export."""
