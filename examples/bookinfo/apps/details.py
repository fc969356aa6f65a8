"""details: the book's bibliographic details, like Istio's Bookinfo details v1.

Routes: ``GET /details/{id}`` (JSON) and ``GET /health``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

PREFIX = "/details/"


def book_details(pid):
    return {
        "id": pid,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }


def app(req):
    if req.method not in ("GET", "HEAD"):
        return c.json_reply(405, {"error": "method not allowed"}, [("Allow", "GET, HEAD")])
    if req.path == "/health":
        return c.json_reply(200, {"status": "Details is healthy"})
    if req.path.startswith(PREFIX):
        try:
            pid = int(req.path[len(PREFIX):])
        except ValueError:
            return c.json_reply(400, {"error": "please provide numeric product id"})
        return c.json_reply(200, book_details(pid))
    return c.json_reply(404, {"error": "not found"})


if __name__ == "__main__":
    c.serve(app)
