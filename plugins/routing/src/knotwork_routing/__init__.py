"""Knotwork plugin `routing`."""
