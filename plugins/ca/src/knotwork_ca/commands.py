"""`knotwork certs WORKLOAD`: the certificate each proxy of a workload holds, read from its admin port."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from knotwork.cli import UsageError
from knotwork.config import STATE_DIR, find_mesh_file
from knotwork.records import CliCommand

__all__ = ["COMMANDS", "render", "run_certs"]

#: Seconds to wait for one proxy's admin port.
ADMIN_TIMEOUT = 5.0


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("workload", metavar="WORKLOAD", help="workload, instance or node id")
    p.add_argument("--mesh", metavar="DIR", help="mesh directory or file (default: the current directory)")
    p.add_argument("--output", "-o", choices=("table", "json"), default="table",
                   help="json: a list with each proxy's node, instance and its admin's GET /identity answer")


def _identity(node: dict) -> dict[str, Any]:
    """GET /identity on `node`'s admin port; an unreachable admin gives ``admin_error``."""
    import urllib.error
    import urllib.request

    url = f"http://{node.get('address') or '127.0.0.1'}:{node['admin']}/identity"
    try:
        with urllib.request.urlopen(url, timeout=ADMIN_TIMEOUT) as reply:  # noqa: S310 - a proxy's admin port
            status = json.load(reply)
    except urllib.error.HTTPError as exc:
        status = {"identity": None} if exc.code == 404 else {"admin_error": f"{url}: HTTP {exc.code}"}
    except (OSError, ValueError) as exc:
        status = {"admin_error": f"{url}: {exc}"}
    if not isinstance(status, dict):
        status = {"admin_error": f"{url}: expected a JSON object, got {type(status).__name__}"}
    return {"node": node["id"], "instance": node.get("instance") or "", "workload": node.get("workload") or "",
            **status}


def run_certs(args: argparse.Namespace) -> int:
    import anyio

    from knotwork.control import admin_call

    state_dir = find_mesh_file(args.mesh).absolute().parent / STATE_DIR
    try:
        proxies = anyio.run(admin_call, state_dir, "proxies")["proxies"]
    except (OSError, TimeoutError) as exc:
        print(f"knotwork certs: the mesh is not running ({exc}); start it with `knotwork up`", file=sys.stderr)
        return 1
    nodes = [n for n in proxies if args.workload in (n.get("workload"), n.get("instance"), n.get("id"))]
    if not nodes:
        known = ", ".join(sorted({n.get("workload") or n.get("id") for n in proxies})) or "none"
        raise UsageError(f"WORKLOAD: no proxy of workload, instance or node {args.workload!r} is known (known: {known})")
    entries = [_identity(n) if n.get("admin") else {"node": n["id"], "instance": n.get("instance") or "",
                                                    "workload": n.get("workload") or "",
                                                    "admin_error": "the proxy has no admin port yet"}
               for n in sorted(nodes, key=lambda n: n["id"])]
    print(json.dumps(entries, indent=1) if args.output == "json" else render(entries))
    return 1 if any("admin_error" in e for e in entries) else 0


def _name(cert: dict) -> str:
    """A chain certificate's subject, or its SPIFFE IDs when it has none (as SVIDs do)."""
    return cert.get("subject") or ", ".join(cert.get("spiffe_ids") or ()) or "(no subject)"


def _chain_lines(chain: Iterable[dict]) -> list[str]:
    lines = []
    for cert in chain:
        root = cert.get("subject") and cert.get("subject") == cert.get("issuer")
        lines.append(f"{_name(cert)}  →  {cert.get('issuer') or '(no issuer)'}"
                     f"{'  (root)' if root else ''}  [serial {cert.get('serial', '?')}, until {cert.get('not_after', '?')}]")
    return lines


def render(entries: Iterable[dict]) -> str:
    """The table `knotwork certs` prints: per proxy its identity, serial, validity and chain to the root."""
    out: list[str] = []
    for e in entries:
        title = e.get("instance") or e["node"]
        out.append(f"{title} ({e['node']})" if title != e["node"] else title)
        if "admin_error" in e:
            out.append(f"  error:       admin not reachable: {e['admin_error']}")
            continue
        if not e.get("identity"):
            out.append("  identity:    none (the mesh has no certificate authority: plaintext)")
            continue
        out.append(f"  identity:    {e['identity']}")
        if not e.get("serial"):
            out.append("  certificate: none yet (still requesting)")
        else:
            out.append(f"  serial:      {e['serial']}")
            out.append(f"  not before:  {e.get('not_before', '?')}")
            out.append(f"  not after:   {e.get('not_after', '?')}")
            if "renewals" in e:
                out.append(f"  renewals:    {e['renewals']}")
            chain = _chain_lines(e.get("chain") or ())
            out.append("  chain:       " + (chain[0] if chain else "(none)"))
            out.extend("               " + line for line in chain[1:])
        if e.get("last_error"):
            out.append(f"  last error:  {e['last_error']}")
    return "\n".join(out)


COMMANDS = [
    CliCommand(name="certs", help="the certificate of each proxy of a workload: identity, serial, validity, chain",
               configure=configure, run=run_certs),
]
