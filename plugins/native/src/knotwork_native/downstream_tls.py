"""TLS terminated on a listener (a gateway's HTTPS servers): SSL contexts chosen by SNI.

A listener's :class:`~knotwork.proxyconfig.ServerTls` chains become one
:class:`ssl.SSLContext` each, built from the PEM strings of the snapshot's
Secrets, loaded without the key touching a disk by the kernel's
:func:`knotwork.identity.load_chain` (anonymous in-memory files). Contexts are
cached by content, so a config push that does not change a secret builds
nothing.

The listener is served with one *listening* context whose ``sni_callback``
looks up the listener's current plan (so a renewed certificate is served by
the next handshake, without rebinding) and switches the connection to the
chain's context: exact server name first, then the longest ``*.suffix``,
then the chain with no names; no match refuses the handshake
(``unrecognized_name``), as Envoy refuses a connection no filter chain
matches. OpenSSL keeps the listening context's verify mode and protocol
versions for the connection, so the listening context asks for a client
certificate when any chain does (verified against the chosen chain's CAs)
and spans every chain's versions; :meth:`TlsPlan.refusal` then checks, once
the handshake is done, that the chosen chain got what it requires.
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from knotwork.identity import load_chain
from knotwork.proxyconfig import Secret, ServerTls

__all__ = ["TlsChain", "TlsPlan", "build_tls_plan"]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_CACHE: OrderedDict[tuple[Any, ...], ssl.SSLContext] = OrderedDict()
_CACHE_SIZE = 64
CHAIN_ATTR = "_knotwork_tls_chain"


def _version(value: str | None, where: str, field: str) -> ssl.TLSVersion | None:
    if value is None:
        return None
    if value not in _VERSIONS:
        raise ValueError(f"{where}: {field} {value!r} is not one of {sorted(_VERSIONS)}")
    return _VERSIONS[value]


def _context(chain: ServerTls, cert: Secret, ca: Secret | None, where: str) -> ssl.SSLContext:
    key = (cert.certificate_chain, cert.private_key, ca.trust_bundle if ca else None,
           chain.min_version, chain.max_version, chain.alpn)
    ctx = _CACHE.get(key)
    if ctx is not None:
        _CACHE.move_to_end(key)
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _version(chain.min_version, where, "min_version") or ssl.TLSVersion.TLSv1_2
    maximum = _version(chain.max_version, where, "max_version")
    if maximum is not None:
        ctx.maximum_version = maximum
    try:
        load_chain(ctx, cert.certificate_chain, cert.private_key)
    except (ssl.SSLError, OSError, UnicodeEncodeError) as exc:
        raise ValueError(f"{where}: secret {cert.name!r}: certificate chain or key refused: {exc}") from exc
    if ca is not None:
        try:
            ctx.load_verify_locations(cadata=ca.trust_bundle)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"{where}: secret {ca.name!r}: trust bundle refused: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    if chain.alpn:
        ctx.set_alpn_protocols(list(chain.alpn))
    _CACHE[key] = ctx
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return ctx


class TlsChain:
    """One chain: its context and what a connection on it must satisfy."""

    __slots__ = ("context", "max_version", "min_version", "needs_client_cert", "spec")

    def __init__(self, spec: ServerTls, context: ssl.SSLContext) -> None:
        self.spec = spec
        self.context = context
        self.needs_client_cert = spec.client_ca is not None
        self.min_version = context.minimum_version
        maximum = context.maximum_version
        self.max_version = ssl.TLSVersion.TLSv1_3 if maximum == ssl.TLSVersion.MAXIMUM_SUPPORTED else maximum


class TlsPlan:
    """A listener's chains, looked up by SNI."""

    __slots__ = ("exact", "fallback", "suffixes")

    def __init__(self, chains: list[TlsChain]) -> None:
        self.exact: dict[str, TlsChain] = {}
        self.suffixes: list[tuple[str, TlsChain]] = []  # (".example.com", chain), longest first
        self.fallback: TlsChain | None = None
        for chain in chains:
            if not chain.spec.server_names:
                self.fallback = self.fallback or chain
            for name in chain.spec.server_names:
                name = name.lower()
                if name.startswith("*."):
                    self.suffixes.append((name[1:], chain))
                else:
                    self.exact.setdefault(name, chain)
        self.suffixes.sort(key=lambda item: len(item[0]), reverse=True)

    def choose(self, server_name: str | None) -> TlsChain | None:
        """The chain serving `server_name` (None: the client sent no SNI)."""
        if server_name:
            name = server_name.lower().rstrip(".")
            found = self.exact.get(name)
            if found is not None:
                return found
            for suffix, chain in self.suffixes:
                if name.endswith(suffix) and len(name) > len(suffix):
                    return chain
        return self.fallback

    def chains(self) -> list[TlsChain]:
        seen: dict[int, TlsChain] = {id(c): c for c in self.exact.values()}
        seen.update((id(c), c) for _, c in self.suffixes)
        if self.fallback is not None:
            seen[id(self.fallback)] = self.fallback
        return list(seen.values())

    def listening_context(self, current: Any) -> ssl.SSLContext:
        """The context a listener is bound with; `current()` returns the listener's plan now."""
        chains = self.chains()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = min(c.min_version for c in chains)
        ctx.maximum_version = max(c.max_version for c in chains)
        if any(c.needs_client_cert for c in chains):
            ctx.verify_mode = ssl.CERT_OPTIONAL  # required per chain: see refusal()
        ctx.set_alpn_protocols(sorted({p for c in chains for p in c.spec.alpn}))

        def on_server_name(ssl_object: Any, server_name: str | None, _: ssl.SSLContext) -> int | None:
            plan = current()
            chain = plan.choose(server_name) if plan is not None else None
            if chain is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            ssl_object.context = chain.context
            setattr(ssl_object, CHAIN_ATTR, chain)
            return None

        ctx.sni_callback = on_server_name
        return ctx

    @staticmethod
    def refusal(ssl_object: Any) -> str | None:
        """Why an established connection must be closed (its chain's requirements), or None."""
        chain: TlsChain | None = getattr(ssl_object, CHAIN_ATTR, None)
        if chain is None:
            return "no TLS chain was chosen"
        if chain.needs_client_cert and not ssl_object.getpeercert():
            return "the client presented no certificate (mutual TLS)"
        version = ssl_object.version()
        order = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
        got = order.get(version or "")
        if got is None or not chain.min_version <= got <= chain.max_version:
            return f"{version} is outside the chain's protocol versions"
        return None


def build_tls_plan(chains: tuple[ServerTls, ...], secrets: Mapping[str, Secret], where: str) -> TlsPlan:
    """Contexts for a listener's chains; raises ValueError naming listener, secret and field."""
    built = []
    for spec in chains:
        cert = secrets.get(spec.certificate)
        if cert is None or not cert.certificate_chain or not cert.private_key:
            raise ValueError(f"{where}: server_tls: secret {spec.certificate!r} has no certificate chain and key")
        ca = None
        if spec.client_ca is not None:
            ca = secrets.get(spec.client_ca)
            if ca is None or not ca.trust_bundle:
                raise ValueError(f"{where}: server_tls: secret {spec.client_ca!r} has no trust bundle")
        built.append(TlsChain(spec, _context(spec, cert, ca, where)))
    return TlsPlan(built)
