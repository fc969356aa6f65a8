"""Bookinfo apps as real processes on loopback, without a mesh.

A tiny in-test forward proxy stands in for the sidecar: every app gets it as
HTTP_PROXY, it relays absolute-form requests to the app whose service name is
the target host (``routes``), and records each hop with its headers.
"""

import http.client
import http.server
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

BOOKINFO = Path(__file__).resolve().parents[1]
TRACE_HEADERS = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "congo=t61rcWkgMzE", "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
    "x-b3-spanid": "e457b5a2e4d86bd1", "x-b3-parentspanid": "05e3ac9a4f6e3b90",
    "x-b3-sampled": "1", "x-b3-flags": "0", "b3": "80f198ee56343ba8-e457b5a2e4d86bd1-1",
    "x-ot-span-context": "ot-ctx",
}
STARS = "★"


def wait_for(condition, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, path, method="GET", headers=None, body=None, timeout=15):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read().decode()
    finally:
        conn.close()


def get_json(port, path, **kw):
    status, _, body = request(port, path, **kw)
    return status, json.loads(body)


class Fake:
    """An in-process HTTP server: ``respond(fake, handler) -> (status, obj)``; records calls."""

    def __init__(self, respond):
        self.respond, self.calls, self.clients, self.lock = respond, [], [], threading.Lock()
        self.hang_up = False
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self):
                with fake.lock:
                    fake.calls.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                    fake.clients.append(self.client_address)
                status, obj = fake.respond(fake, self)
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = fake.hang_up  # close without saying so: a stale keep-alive

            do_POST = do_GET

            def handle(self):
                try:
                    super().handle()
                except ConnectionError:
                    pass  # the app hung up (timeouts, disconnect tests)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def relay(fake, handler):
    """The forward proxy: absolute-form target -> the app named by the host."""
    url = urlsplit(handler.path)
    port = fake.routes.get(url.hostname)
    if port is None:
        return 503, {"error": f"no healthy upstream for {url.hostname}"}
    headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("connection", "host")}
    headers["Host"] = url.netloc
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", url.path, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    except OSError as exc:
        return 503, {"error": repr(exc)}
    finally:
        conn.close()


class App:
    def __init__(self, script, instance, version="v1", proxy=None, tmp=None, **env):
        self.instance, self.port = instance, free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        full_env.update(PORT=str(self.port), INSTANCE=instance, SERVICE_VERSION=version,
                        PYTHONUNBUFFERED="1", **env)
        if proxy:
            full_env["HTTP_PROXY"] = f"http://127.0.0.1:{proxy.port}"
        self.out, self.err = tmp / f"{instance}.out", tmp / f"{instance}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, f"apps/{script}.py"], cwd=BOOKINFO,
                                         env=full_env, stdout=out, stderr=err)

    def healthy(self):
        assert self.proc.poll() is None, f"{self.instance} exited: {self.err.read_text()}"
        try:
            return request(self.port, "/health", timeout=1)[0] == 200
        except OSError:
            return False

    def wait_ready(self):
        wait_for(self.healthy, what=f"{self.instance} to answer /health")
        return self

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bookinfo")
    proxy = Fake(relay)
    proxy.routes = {}
    specs = [("productpage", "productpage-v1-1", "v1"), ("details", "details-v1-1", "v1"),
             ("ratings", "ratings-v1-1", "v1"), ("reviews", "reviews-v1-1", "v1"),
             ("reviews", "reviews-v2-1", "v2"), ("reviews", "reviews-v3-1", "v3")]
    apps = {}
    try:
        for script, instance, version in specs:
            apps[instance] = App(script, instance, version, proxy=proxy, tmp=tmp)
        for app in apps.values():
            app.wait_ready()
        proxy.apps, proxy.tmp = apps, tmp
        yield proxy
    finally:
        for app in apps.values():
            app.proc.send_signal(signal.SIGTERM)
        for app in apps.values():
            app.stop()
        proxy.close()


@pytest.fixture
def proxy(mesh):
    """The mesh's proxy, reset: default routes (reviews -> v2), no recorded calls."""
    apps = mesh.apps
    mesh.routes = {"productpage": apps["productpage-v1-1"].port, "details": apps["details-v1-1"].port,
                   "ratings": apps["ratings-v1-1"].port, "reviews": apps["reviews-v2-1"].port}
    mesh.calls.clear()
    mesh.clients.clear()
    mesh.hang_up = False
    return mesh


@pytest.fixture
def fake():
    """A factory of in-test fake services, closed after the test."""
    fakes = []
    yield lambda respond: fakes.append(Fake(respond)) or fakes[-1]
    for server in fakes:
        server.close()


def page(proxy, **headers):
    status, _, body = request(proxy.apps["productpage-v1-1"].port, "/productpage", headers=headers)
    assert status == 200
    return body


def test_productpage_shows_details_and_reviews(proxy):
    body = page(proxy)
    for text in ("The Comedy of Errors", "William Shakespeare", "paperback", "PublisherA",
                 "123-1234567890", "Reviewer1", "Reviewer2", "slapstick humour is refreshing",
                 "Reviews served by: reviews-v2-1", 'style="color: black"'):
        assert text in body
    assert "unavailable" not in body


@pytest.mark.parametrize("version,color", [("v1", None), ("v2", "black"), ("v3", "red")])
def test_reviews_versions(proxy, version, color):
    reviews = proxy.apps[f"reviews-{version}-1"]
    status, data = get_json(reviews.port, "/reviews/0")
    assert status == 200
    assert data["id"] == "0" and data["podname"] == reviews.instance and data["clustername"] == "null"
    assert [r["reviewer"] for r in data["reviews"]] == ["Reviewer1", "Reviewer2"]
    if color is None:
        assert all("rating" not in r for r in data["reviews"])
    else:
        assert [r["rating"] for r in data["reviews"]] == [
            {"stars": 5, "color": color}, {"stars": 4, "color": color}]
    proxy.routes["reviews"] = reviews.port
    body = page(proxy)
    assert f"Reviews served by: {reviews.instance}" in body
    if color is None:
        assert STARS not in body
    else:
        assert f'style="color: {color}"' in body and STARS * 5 in body and STARS * 4 + "☆" in body


def test_details_and_ratings_json(proxy):
    assert get_json(proxy.apps["details-v1-1"].port, "/details/0") == (200, {
        "id": 0, "author": "William Shakespeare", "year": 1595, "type": "paperback",
        "pages": 200, "publisher": "PublisherA", "language": "English",
        "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"})
    ratings = proxy.apps["ratings-v1-1"].port
    assert get_json(ratings, "/ratings/0") == (200, {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})
    assert get_json(ratings, "/ratings/abc")[0] == 400
    assert get_json(ratings, "/nope")[0] == 404


def test_ratings_failure_knob(proxy):
    port = proxy.apps["ratings-v1-1"].port
    first = {"x-bookinfo-fail": "first-attempt:503", "x-request-id": f"rid-{uuid.uuid4()}"}
    assert get_json(port, "/ratings/0", headers=first)[0] == 503
    assert get_json(port, "/ratings/0", headers=first)[0] == 200  # the same request id again: succeeds
    assert get_json(port, "/ratings/0", headers=dict(first, **{"x-request-id": f"rid-{uuid.uuid4()}"}))[0] == 503
    always = {"x-bookinfo-fail": "always:404", "x-request-id": f"rid-{uuid.uuid4()}"}
    assert [get_json(port, "/ratings/0", headers=always)[0] for _ in range(3)] == [404] * 3
    for ignored in ("first-attempt:abc", "sometimes:503", "always:200"):
        assert get_json(port, "/ratings/0", headers={"x-bookinfo-fail": ignored})[0] == 200
    # productpage forwards the knob on its call to ratings
    status, _ = get_json(proxy.apps["productpage-v1-1"].port, "/api/v1/products/0/ratings",
                         headers={"x-bookinfo-fail": "always:500"})
    assert status == 500


def test_productpage_api(proxy):
    port = proxy.apps["productpage-v1-1"].port
    status, products = get_json(port, "/api/v1/products")
    assert status == 200 and products[0]["title"] == "The Comedy of Errors"
    assert get_json(port, "/api/v1/products/0")[1]["publisher"] == "PublisherA"
    assert get_json(port, "/api/v1/products/0/reviews")[1]["podname"] == "reviews-v2-1"
    assert get_json(port, "/api/v1/products/0/ratings")[1]["ratings"] == {"Reviewer1": 5, "Reviewer2": 4}
    del proxy.routes["details"]
    status, data = get_json(port, "/api/v1/products/0")
    assert status == 503 and "details are currently unavailable" in data["error"]


def test_ratings_unavailable(proxy):
    del proxy.routes["ratings"]
    status, data = get_json(proxy.apps["reviews-v3-1"].port, "/reviews/0")
    assert status == 200
    assert [r["rating"] for r in data["reviews"]] == [
        {"error": "Ratings service is currently unavailable"}] * 2
    assert "Ratings service is currently unavailable" in page(proxy)


def test_dependencies_down_degrade_the_page(proxy):
    del proxy.routes["reviews"]
    body = page(proxy)
    assert "Sorry, product reviews are currently unavailable for this book." in body
    assert "PublisherA" in body and "Reviews served by" not in body
    del proxy.routes["details"]
    body = page(proxy)
    assert "Sorry, product details are currently unavailable for this book." in body


def test_headers_forwarded_on_every_hop(proxy):
    sent = dict(TRACE_HEADERS, **{"x-request-id": f"rid-{uuid.uuid4()}", "end-user": "jason"})
    page(proxy, **sent)
    hops = {urlsplit(path).hostname: headers for path, headers in proxy.calls
            if headers.get("x-request-id") == sent["x-request-id"]}
    assert set(hops) == {"details", "reviews", "ratings"} and len(proxy.calls) == 3
    for host, headers in hops.items():
        for name, value in sent.items():
            assert headers.get(name) == value, (host, name)


def test_one_keepalive_connection_to_the_proxy(proxy):
    page(proxy)
    hosts = [urlsplit(path).hostname for path, _ in proxy.calls]
    assert hosts == ["details", "reviews", "ratings"]
    details, reviews, ratings = proxy.clients
    assert details == reviews != ratings  # productpage reused its connection; reviews has its own


def test_stale_keepalive_connection_is_replaced(proxy):
    proxy.hang_up = True  # the proxy drops every connection after one response
    body = page(proxy)
    assert "unavailable" not in body and "Reviews served by: reviews-v2-1" in body
    hosts = [urlsplit(path).hostname for path, _ in proxy.calls]
    assert hosts == ["details", "reviews", "ratings"]  # reconnected, not a counted retry
    assert proxy.clients[0] != proxy.clients[1]


def test_login_cookie_sets_end_user(proxy):
    port = proxy.apps["productpage-v1-1"].port
    status, headers, _ = request(port, "/login", method="POST", body="username=jason",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302 and headers["Location"] == "/productpage"
    cookie = headers["Set-Cookie"].split(";")[0]
    assert cookie == "user=jason"
    rid = f"rid-{uuid.uuid4()}"
    body = page(proxy, Cookie=cookie, **{"x-request-id": rid})
    assert "Signed in as jason" in body
    hops = [h for _, h in proxy.calls if h.get("x-request-id") == rid]
    assert len(hops) == 3 and all(h.get("end-user") == "jason" for h in hops)
    status, headers, _ = request(port, "/logout")
    assert status == 302 and "Max-Age=0" in headers["Set-Cookie"]
    assert "Signed in as" not in page(proxy)


def reviews_json(podname):
    return {"id": "0", "podname": podname, "clustername": "null",
            "reviews": [{"reviewer": "Reviewer1", "text": "fine"}]}


def test_reviews_retried_exactly_once(proxy, fake):
    flaky = fake(lambda f, h: (503, {}) if len(f.calls) == 1 else (200, reviews_json("flaky-1")))
    proxy.routes["reviews"] = flaky.port
    assert "Reviews served by: flaky-1" in page(proxy)
    assert len(flaky.calls) == 2
    broken = fake(lambda f, h: (500, {"error": "boom"}))
    proxy.routes["reviews"] = broken.port
    assert "product reviews are currently unavailable" in page(proxy)
    assert len(broken.calls) == 2


def test_details_not_retried(proxy, fake):
    broken = fake(lambda f, h: (500, {"error": "boom"}))
    proxy.routes["details"] = broken.port
    assert "product details are currently unavailable" in page(proxy)
    assert len(broken.calls) == 1


def test_reviews_timeout_is_honoured(proxy, fake):
    slow = fake(lambda f, h: time.sleep(1.0) or (200, reviews_json("slow-1")))
    proxy.routes["reviews"] = slow.port
    app = App("productpage", "productpage-fast-1", proxy=proxy, tmp=proxy.tmp, REVIEWS_TIMEOUT="0.2")
    try:
        app.wait_ready()
        start = time.monotonic()
        status, _, body = request(app.port, "/productpage")
        elapsed = time.monotonic() - start
    finally:
        app.stop()
    assert status == 200 and "product reviews are currently unavailable" in body
    assert elapsed < 0.9
    wait_for(lambda: len(slow.calls) >= 2, what="the retry to reach reviews")
    assert len(slow.calls) == 2


def test_direct_mode_without_proxy(proxy, tmp_path):
    apps = proxy.apps
    app = App("productpage", "productpage-direct-1", tmp=tmp_path,
              DETAILS_URL=f"http://127.0.0.1:{apps['details-v1-1'].port}",
              REVIEWS_URL=f"http://127.0.0.1:{apps['reviews-v1-1'].port}")
    reviews = App("reviews", "reviews-direct-1", "v2", tmp=tmp_path,
                  RATINGS_URL=f"http://127.0.0.1:{free_port()}")  # nobody listens there
    try:
        app.wait_ready()
        reviews.wait_ready()
        body = request(app.port, "/productpage")[2]
        data = get_json(reviews.port, "/reviews/1")[1]
    finally:
        app.stop()
        reviews.stop()
    assert "PublisherA" in body and "Reviews served by: reviews-v1-1" in body
    assert data["reviews"][0]["rating"] == {"error": "Ratings service is currently unavailable"}
    assert not proxy.calls


def test_sigterm_finishes_in_flight_request(proxy, fake, tmp_path):
    started = threading.Event()
    slow = fake(lambda f, h: started.set() or time.sleep(0.4) or (200, reviews_json("slow-1")))
    proxy.routes["reviews"] = slow.port
    app = App("productpage", "productpage-term-1", proxy=proxy, tmp=tmp_path).wait_ready()
    result = {}
    client = threading.Thread(target=lambda: result.update(r=request(app.port, "/productpage")))
    client.start()
    assert started.wait(5)
    term = time.monotonic()
    app.proc.send_signal(signal.SIGTERM)
    app.proc.wait(5)
    took = time.monotonic() - term
    client.join(5)
    status, headers, body = result["r"]
    assert status == 200 and "Reviews served by: slow-1" in body
    assert headers["Connection"] == "close"
    assert app.proc.returncode == 0 and took < 1.0
    idle = App("details", "details-term-1", tmp=tmp_path).wait_ready()
    term = time.monotonic()
    idle.proc.send_signal(signal.SIGTERM)
    idle.proc.wait(5)
    assert time.monotonic() - term < 1.0 and idle.proc.returncode == 0


def test_client_disconnect_is_harmless(proxy, fake, tmp_path):
    gate = threading.Event()
    slow = fake(lambda f, h: gate.set() or time.sleep(0.2) or (200, reviews_json("slow-1")))
    proxy.routes["reviews"] = slow.port
    app = proxy.apps["productpage-v1-1"]
    for payload in (b"GET /productpage HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /produ", b""):
        sock = socket.create_connection(("127.0.0.1", app.port))
        sock.sendall(payload)
        if payload.endswith(b"\r\n\r\n"):
            assert gate.wait(5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # abortive close: the app's write gets a reset
    wait_for(lambda: "client-disconnected" in app.out.read_text(), what="the failed write")
    assert app.healthy()
    assert "Traceback" not in app.err.read_text()
    log = app.out.read_text()
    assert '"GET /health" 200' in log and "listening on 127.0.0.1" in log
