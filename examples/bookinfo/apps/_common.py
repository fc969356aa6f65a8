"""Shared plumbing for the Bookinfo apps (standard library only).

* Environment: ``PORT`` (listen port on 127.0.0.1), ``INSTANCE`` (instance
  name), ``SERVICE_VERSION``, ``HTTP_PROXY`` (the sidecar's forward proxy).
* :func:`serve` runs an app - a function ``Request -> Reply`` - on a threaded
  HTTP/1.1 server: one log line per request on stdout, graceful SIGTERM/SIGINT
  (in-flight requests finish, exit in under a second), client disconnects are
  shrugged off.
* :func:`get_json` calls another service. Targets are ``http://<service>:9080``
  unless ``<SERVICE>_URL`` overrides the base (``DETAILS_URL=http://127.0.0.1:9081``).
  With ``HTTP_PROXY`` set the request goes to the proxy in absolute form,
  otherwise straight to the target. Each thread keeps one keep-alive connection
  per proxy (or target) and reconnects after a failure.
"""

import http.client
import http.cookies
import http.server
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from urllib.parse import parse_qs, urlsplit

# Propagated from the incoming request to every outbound call.
FORWARD_HEADERS = (
    "end-user", "x-request-id", "traceparent", "tracestate",
    "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled",
    "x-b3-flags", "b3", "x-ot-span-context",
    "x-bookinfo-fail",  # the test knob ratings obeys (see ratings.py)
)
MAX_BODY = 64 * 1024           # largest request body an app accepts
MAX_UPSTREAM_BODY = 1 << 20    # largest response body read from another service
DRAIN_SECONDS = 0.8            # how long SIGTERM waits for in-flight requests


def env(name, default=""):
    return os.environ.get(name) or default


def env_float(name, default):
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


INSTANCE = env("INSTANCE") or env("HOSTNAME") or socket.gethostname()
SERVICE_VERSION = env("SERVICE_VERSION", "v1")

_log_lock = threading.Lock()


def log(message):
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {INSTANCE} {message}\n"
    with _log_lock:
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
        except (OSError, ValueError):
            pass  # nobody reads our stdout any more; keep serving


# --------------------------------------------------------------------------- serving

class Request:
    __slots__ = ("method", "path", "query", "headers", "body")

    def __init__(self, method, target, headers, body):
        parts = urlsplit(target)
        self.method, self.path, self.headers, self.body = method, parts.path or "/", headers, body
        self.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}

    def header(self, name, default=""):
        return self.headers.get(name, default)

    def cookie(self, name):
        jar = http.cookies.SimpleCookie()
        try:
            jar.load(self.header("cookie"))
        except http.cookies.CookieError:
            return ""
        return jar[name].value if name in jar else ""

    def form(self):
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8", "replace")).items()}

    def forward_headers(self):
        """The headers to propagate on calls this request makes (see FORWARD_HEADERS)."""
        return {h: self.headers[h] for h in FORWARD_HEADERS if self.headers.get(h)}


def reply(status, body=b"", content_type="text/plain; charset=utf-8", headers=()):
    """A reply: (status, content type, body bytes, [(header, value), ...])."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    return status, content_type, body, list(headers)


def json_reply(status, obj, headers=()):
    return reply(status, json.dumps(obj), "application/json", headers)


def html_reply(status, text, headers=()):
    return reply(status, text, "text/html; charset=utf-8", headers)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bookinfo"
    timeout = 120  # close idle keep-alive connections after this long
    disable_nagle_algorithm = True  # headers and body go out as two writes
    app = None     # set by serve()

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away; nothing to tell it
        finally:
            close_pool()  # this thread's outbound connections die with it

    def _dispatch(self):
        start = time.monotonic()
        server = self.server
        server.enter()
        try:
            status, ctype, body, headers = self._run()
            if server.draining:
                self.close_connection = True
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            outcome = ""
            try:
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
            except ConnectionError:
                self.close_connection, outcome = True, " client-disconnected"
            ms = (time.monotonic() - start) * 1000
            rid = self.headers.get("x-request-id", "-")
            log(f'"{self.command} {self.path}" {status} {len(body)} {ms:.1f}ms rid={rid}{outcome}')
        finally:
            server.leave()

    def _run(self):
        if "transfer-encoding" in self.headers:
            self.close_connection = True
            return reply(411, "chunked request bodies are not supported\n")
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            return reply(413, "request body too large\n")
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            return type(self).app(Request(self.command, self.path, headers, body))
        except Exception:  # a bug in the app must not take the connection down
            traceback.print_exc(file=sys.stderr)
            return reply(500, "internal error\n")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def version_string(self):
        return self.server_version

    def log_request(self, code="-", size="-"):
        pass  # _dispatch logs, with the duration

    def log_message(self, format, *args):
        log(f"{self.address_string()} {format % args}")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, handler):
        self.draining = False
        self._active = 0
        self._idle = threading.Condition()
        super().__init__(address, handler)

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's slow getfqdn()
        self.server_name, self.server_port = self.server_address[:2]

    def enter(self):
        with self._idle:
            self._active += 1

    def leave(self):
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def drain(self, seconds):
        """Wait until no request is in flight; return how many are left."""
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout=seconds)
            return self._active

    def handle_error(self, request, client_address):
        log(f"error serving {client_address[0]}: {sys.exc_info()[1]!r}")


def serve(app):
    """Serve ``app`` on 127.0.0.1:$PORT until SIGTERM or SIGINT."""
    port = int(env("PORT", "9080"))
    handler = type("Handler", (_Handler,), {"app": staticmethod(app)})
    try:
        server = _Server(("127.0.0.1", port), handler)
    except OSError as exc:
        log(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}")
        sys.exit(1)

    def stop(signum, frame):
        server.draining = True
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"listening on 127.0.0.1:{server.server_port} version={SERVICE_VERSION}")
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        left = server.drain(DRAIN_SECONDS)
        server.server_close()
        log(f"stopped ({left} requests abandoned)" if left else "stopped")
        if left:  # don't let interpreter shutdown race the abandoned threads
            os._exit(0)


# --------------------------------------------------------------------------- calling

class UpstreamError(Exception):
    """A call failed before a usable response arrived (connect, timeout, reset, bad JSON)."""


def _proxy_address():
    proxy = env("HTTP_PROXY") or env("http_proxy")
    if not proxy:
        return None
    parts = urlsplit(proxy if "//" in proxy else "http://" + proxy)
    return parts.hostname, parts.port or 80


PROXY = _proxy_address()
_local = threading.local()


def service_url(service, path):
    """``http://<service>:9080<path>``, or ``$<SERVICE>_URL<path>`` when that is set."""
    base = env(service.upper().replace("-", "_") + "_URL", f"http://{service}:9080")
    return base.rstrip("/") + path


def close_pool():
    """Close the calling thread's outbound keep-alive connections."""
    for conn in _local.__dict__.pop("pool", {}).values():
        conn.close()


def _exchange(conn, target, headers, deadline):
    def remaining():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("upstream timed out")
        if conn.sock is not None:
            conn.sock.settimeout(left)
        return left

    conn.timeout = remaining()  # bounds connect() when the connection is new
    conn.request("GET", target, headers=headers)
    remaining()
    resp = conn.getresponse()
    chunks, size = [], 0
    while True:
        remaining()
        chunk = resp.read(65536)  # read(), unlike read1(), releases the connection at the end
        if not chunk:
            return resp.status, b"".join(chunks)
        size += len(chunk)
        if size > MAX_UPSTREAM_BODY:
            raise UpstreamError("upstream response too large")
        chunks.append(chunk)


def http_get(url, headers, timeout):
    """GET ``url``; return (status, body). Raises UpstreamError, never hangs past ``timeout``."""
    parts = urlsplit(url)
    if PROXY:
        key, target = PROXY, url
    else:
        key = (parts.hostname, parts.port or 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    pool = _local.__dict__.setdefault("pool", {})
    deadline = time.monotonic() + timeout
    for attempt in (1, 2):
        conn = pool.get(key)
        reused = conn is not None and conn.sock is not None
        if conn is None:
            conn = pool[key] = http.client.HTTPConnection(*key, timeout=timeout)
        try:
            return _exchange(conn, target, headers, deadline)
        except (OSError, http.client.HTTPException, UpstreamError) as exc:
            conn.close()
            pool.pop(key, None)
            stale = isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError,
                                     BrokenPipeError))
            if not (reused and stale and attempt == 1):  # only a stale keep-alive is retried
                raise UpstreamError(f"GET {url}: {exc!r}") from exc
    raise AssertionError("unreachable")


def get_json(url, headers, timeout):
    """GET ``url`` and decode JSON; return (status, data). Raises UpstreamError."""
    status, body = http_get(url, headers, timeout)
    try:
        return status, json.loads(body)
    except ValueError as exc:
        raise UpstreamError(f"GET {url}: {status} with a body that is not JSON") from exc
