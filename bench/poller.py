"""The push-to-serving client: polls a proxy in a tight loop on one keep-alive connection.

Run by ``bench/run.py`` as its own process (so its busy loop does not share a
GIL with the control plane). Protocol on stdin/stdout, one line each:

- ``WAIT <body>``: answer ``POLLING`` once the current body is *not* <body>
  (the old endpoint still serves), then poll until a response carries <body>
  and answer ``SEEN <monotonic_ns> <polls>`` (CLOCK_MONOTONIC is system-wide,
  so the control plane's ``notify()`` timestamp can be subtracted);
- ``QUIT``: exit.
"""

from __future__ import annotations

import socket
import sys
import time


class Client:
    def __init__(self, port: int, host_header: str) -> None:
        self.port = port
        self.request = f"GET / HTTP/1.1\r\nhost: {host_header}\r\n\r\n".encode()
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        return sock

    def get(self) -> bytes:
        """One request; the response body (reconnects once if the proxy closed the connection)."""
        for attempt in (0, 1):
            if self.sock is None:
                self.sock = self._connect()
            try:
                self.sock.sendall(self.request)
                return self._read()
            except (OSError, ConnectionError):
                self.sock.close()
                self.sock = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _recv(self) -> None:
        data = self.sock.recv(65536)  # type: ignore[union-attr]
        if not data:
            raise ConnectionError("closed by proxy")
        self.buf += data

    def _read(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        while len(rest) < length:
            self._recv()
            rest = self.buf.partition(b"\r\n\r\n")[2]
        body, self.buf = rest[:length], rest[length:]
        if close:
            self.sock.close()  # type: ignore[union-attr]
            self.sock = None
        return body


def main() -> None:
    port, host_header = int(sys.argv[1]), sys.argv[2]
    client = Client(port, host_header)
    out = sys.stdout
    for line in sys.stdin:
        cmd, _, arg = line.rstrip("\n").partition(" ")
        if cmd == "QUIT":
            return
        if cmd != "WAIT":
            print(f"ERROR unknown command {cmd!r}", file=out, flush=True)
            continue
        want = arg.encode()
        deadline = time.monotonic() + 10
        stale = False
        while client.get() == want:  # the previous switch must be over
            if time.monotonic() > deadline:
                stale = True
                break
        if stale:
            print("ERROR the new body is served before the push", file=out, flush=True)
            continue
        print("POLLING", file=out, flush=True)
        polls = 0
        deadline = time.monotonic() + 30
        get = client.get
        while True:
            body = get()
            now = time.monotonic_ns()
            polls += 1
            if body == want:
                print(f"SEEN {now} {polls}", file=out, flush=True)
                break
            if polls % 1000 == 0 and time.monotonic() > deadline:
                print("ERROR timeout: the new endpoint never served", file=out, flush=True)
                break


if __name__ == "__main__":
    main()
