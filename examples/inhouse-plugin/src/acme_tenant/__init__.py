"""ACME's Knotwork plugin `tenant`: a header-based tenant authorizer.

Requests to a workload's inbound listener must carry a tenant header (by
default ``x-tenant``) naming one of the allowed tenants, or they are denied
(403). See the README for the mesh file that selects it.
"""

from .authorizer import TenantAuthorizer
from .compiler import mark_inbound_listeners
from .settings import TenantSettings

__all__ = ["TenantAuthorizer", "TenantSettings", "mark_inbound_listeners"]
