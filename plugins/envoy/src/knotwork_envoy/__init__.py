"""Knotwork proxy engine: real Envoy sidecars and gateways driven over xDS."""

__version__ = "0.1.0"
