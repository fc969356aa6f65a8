"""End to end: `knotwork up` on the echo mesh, `knotwork apply` shifts ingress traffic to web-b,
`knotwork delete` restores round robin. Measures apply → first response served by web-b.

The applied VirtualService binds the ingress gateway (`knotwork-system/ingress`) for the host
`web.example.com`: the mesh file's own ingress route already binds `*` on that gateway, and for a
gateway the routing plugin merges the routes of every VirtualService per host in order (as Istio
does), so a second `*` VirtualService would never be reached behind that route's `/` prefix.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.e2e.harness import RunningMesh, wait_for  # noqa: E402

ECHO = REPO / "tests" / "e2e" / "meshes" / "echo"
HOST = "web.example.com"
ROUTING = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web-ingress}}
spec:
  hosts: ["{HOST}"]
  gateways: [knotwork-system/ingress]
  http:
    - route:
        - destination: {{host: web, subset: b, port: {{number: 8080}}}}
          weight: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web}}
spec:
  host: web
  subsets:
    - {{name: a, labels: {{version: a}}}}
    - {{name: b, labels: {{version: b}}}}
"""


def spread(client: httpx.Client, url: str, n: int) -> Counter:
    return Counter(client.get(url, headers={"host": HOST}).text for _ in range(n))


def test_apply_shifts_traffic_to_b_and_delete_restores_round_robin(tmp_path):
    mesh = RunningMesh(ECHO, tmp_path)
    try:
        (mesh.dir / "web-b.ready").touch()
        mesh.wait_ready()
        url = mesh.url + "/"
        with httpx.Client(timeout=5) as client:
            wait_for(lambda: set(spread(client, url, 10)) == {"web-a-1", "web-b-1"}, 20, "round robin over a and b")
            rules = tmp_path / "web-b-only.yaml"
            rules.write_text(ROUTING)
            started = time.monotonic()
            done = mesh.knotwork("apply", "-f", str(rules), "--mesh", str(mesh.dir))
            applied = time.monotonic()
            assert done.returncode == 0, done.stderr
            assert done.stdout.splitlines() == ["VirtualService/default/web-ingress created",
                                                "DestinationRule/default/web created"]
            # round robin alternates a, b, a, …: the new route shows as the run of web-b answers that never ends
            seen: list[tuple[float, str]] = []

            def only_b_since_a_while() -> bool:
                seen.append((time.monotonic(), client.get(url, headers={"host": HOST}).text))
                return len(seen) >= 20 and all(body == "web-b-1" for _, body in seen[-20:])

            wait_for(only_b_since_a_while, 5, "all traffic on web-b", interval=0.002)
            run_start = len(seen) - next(i for i, (_, body) in enumerate(reversed(seen)) if body != "web-b-1") \
                if any(body != "web-b-1" for _, body in seen) else 0
            took = seen[run_start][0] - applied
            print(f"\napply -> first response from web-b's route: {took * 1000:.0f} ms "
                  f"({run_start} answers before it; the apply command itself took {(applied - started) * 1000:.0f} ms)")
            assert took < 1.0

            done = mesh.knotwork("delete", "-f", str(rules), "--mesh", str(mesh.dir))
            assert done.returncode == 0, done.stderr
            wait_for(lambda: set(spread(client, url, 10)) == {"web-a-1", "web-b-1"}, 5, "round robin again")
        mesh.stop()
    finally:
        mesh.kill_everything()
