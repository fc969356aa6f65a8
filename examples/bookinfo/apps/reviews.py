"""reviews: two reviews of the book, like Istio's Bookinfo reviews.

``SERVICE_VERSION`` picks the behaviour: v1 shows no ratings, v2 asks ratings
(``GET /ratings/{id}``, 10 s timeout, RATINGS_TIMEOUT to tune) and shows black
stars, v3 the same with red stars. When ratings cannot be had, each review's
``rating`` is ``{"error": "Ratings service is currently unavailable"}``.

Routes: ``GET /reviews/{id}`` (JSON) and ``GET /health``. ``podname`` in the
answer is ``$INSTANCE``, ``clustername`` is ``$CLUSTER_NAME`` (default "null").
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

PREFIX = "/reviews/"
STAR_COLOR = {"v2": "black", "v3": "red"}.get(c.SERVICE_VERSION)  # None: no ratings
RATINGS_TIMEOUT = c.env_float("RATINGS_TIMEOUT", 10.0)
CLUSTER_NAME = c.env("CLUSTER_NAME", "null")
RATINGS_ERROR = "Ratings service is currently unavailable"
REVIEWS = (
    ("Reviewer1", "An extremely entertaining play by Shakespeare. "
                  "The slapstick humour is refreshing!"),
    ("Reviewer2", "Absolutely fun and entertaining. The play lacks thematic depth "
                  "when compared to other plays by Shakespeare."),
)


def fetch_ratings(pid, headers):
    """Stars per reviewer; empty when the ratings service failed."""
    try:
        status, data = c.get_json(c.service_url("ratings", f"/ratings/{pid}"),
                                  headers, RATINGS_TIMEOUT)
    except c.UpstreamError as exc:
        c.log(f"ratings failed: {exc}")
        return {}
    if status != 200 or not isinstance(data, dict) or not isinstance(data.get("ratings"), dict):
        c.log(f"ratings returned {status}")
        return {}
    return data["ratings"]


def product_reviews(pid, req):
    ratings = fetch_ratings(pid, req.forward_headers()) if STAR_COLOR else None
    reviews = []
    for reviewer, text in REVIEWS:
        review = {"reviewer": reviewer, "text": text}
        if ratings is not None:
            stars = ratings.get(reviewer)
            review["rating"] = ({"stars": stars, "color": STAR_COLOR}
                                if isinstance(stars, int) else {"error": RATINGS_ERROR})
        reviews.append(review)
    return {"id": pid, "podname": c.INSTANCE, "clustername": CLUSTER_NAME, "reviews": reviews}


def app(req):
    if req.method not in ("GET", "HEAD"):
        return c.json_reply(405, {"error": "method not allowed"}, [("Allow", "GET, HEAD")])
    if req.path == "/health":
        return c.json_reply(200, {"status": "Reviews is healthy"})
    if req.path.startswith(PREFIX) and len(req.path) > len(PREFIX):
        pid = req.path[len(PREFIX):]
        if "/" in pid:
            return c.json_reply(404, {"error": "not found"})
        return c.json_reply(200, product_reviews(pid, req))
    return c.json_reply(404, {"error": "not found"})


if __name__ == "__main__":
    c.serve(app)
