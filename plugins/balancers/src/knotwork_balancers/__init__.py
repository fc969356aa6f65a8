"""Knotwork plugin `balancers`: round robin, least request and random load balancers.

Each balancer is a plain object built once per cluster by its strategy's
factory ``(cluster, settings)``; see :class:`knotwork.protocols.Balancer`.
"""

from .others import LeastRequest, Random
from .roundrobin import RoundRobin, smooth_weighted_order

__all__ = ["LeastRequest", "Random", "RoundRobin", "smooth_weighted_order"]
