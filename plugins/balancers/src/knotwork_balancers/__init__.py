"""Knotwork plugin `balancers`."""
