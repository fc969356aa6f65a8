"""Knotwork proxy engine: real Envoy driven over xDS."""
