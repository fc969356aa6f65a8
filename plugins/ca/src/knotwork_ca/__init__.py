"""Knotwork plugin `ca`: the mesh's certificate authority and `knotwork certs`.

:func:`~knotwork_ca.authority.build` is the component factory the control
plane calls; the object it returns implements
:class:`knotwork.identity.CertificateAuthority`.
"""

from .settings import CASettings

__all__ = ["CASettings"]
