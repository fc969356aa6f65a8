"""Knotwork plugin `native`."""
