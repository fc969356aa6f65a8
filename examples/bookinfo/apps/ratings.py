"""ratings: star ratings per reviewer, like Istio's Bookinfo ratings v1.

Routes: ``GET /ratings/{id}`` (JSON) and ``GET /health``.

A failure knob for demonstrating retries, which every Bookinfo app forwards:
the request header ``x-bookinfo-fail: first-attempt:<status>`` makes ratings
answer ``<status>`` the first time it sees a request id (``x-request-id``)
and succeed on every later attempt with that id; ``always:<status>`` makes it
answer ``<status>`` every time. Without the header nothing fails.
"""

import collections
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

PREFIX = "/ratings/"
RATINGS = {"Reviewer1": 5, "Reviewer2": 4}
SEEN_MAX = 100_000  # request ids remembered for first-attempt failures

_seen = collections.OrderedDict()
_seen_lock = threading.Lock()


def injected_failure(req):
    """The status the ``x-bookinfo-fail`` knob asks for on this attempt, or None."""
    mode, _, status = req.header("x-bookinfo-fail").partition(":")
    if not status.isdigit() or not 400 <= int(status) <= 599:
        return None
    if mode == "always":
        return int(status)
    if mode != "first-attempt":
        return None
    rid = req.header("x-request-id")
    with _seen_lock:
        if rid in _seen:
            return None
        _seen[rid] = True
        if len(_seen) > SEEN_MAX:
            _seen.popitem(last=False)
    return int(status)


def app(req):
    if req.method not in ("GET", "HEAD"):
        return c.json_reply(405, {"error": "method not allowed"}, [("Allow", "GET, HEAD")])
    if req.path == "/health":
        return c.json_reply(200, {"status": "Ratings is healthy"})
    if req.path.startswith(PREFIX):
        try:
            pid = int(req.path[len(PREFIX):])
        except ValueError:
            return c.json_reply(400, {"error": "please provide numeric product ID"})
        failure = injected_failure(req)
        if failure is not None:
            return c.json_reply(failure, {"error": f"failure injected by x-bookinfo-fail ({failure})"})
        return c.json_reply(200, {"id": pid, "ratings": dict(RATINGS)})
    return c.json_reply(404, {"error": "not found"})


if __name__ == "__main__":
    c.serve(app)
