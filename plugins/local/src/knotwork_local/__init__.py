"""Knotwork plugin `local`."""
