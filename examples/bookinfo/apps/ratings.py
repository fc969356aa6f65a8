"""ratings: star ratings per reviewer, like Istio's Bookinfo ratings v1.

Routes: ``GET /ratings/{id}`` (JSON) and ``GET /health``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

PREFIX = "/ratings/"
RATINGS = {"Reviewer1": 5, "Reviewer2": 4}


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
        return c.json_reply(200, {"id": pid, "ratings": dict(RATINGS)})
    return c.json_reply(404, {"error": "not found"})


if __name__ == "__main__":
    c.serve(app)
