"""productpage: the Bookinfo front end.

Renders the book page from details (``GET /details/{id}``, 3 s timeout, no
retry) and reviews (``GET /reviews/{id}``, 3 s timeout, one retry), like
Istio's productpage. A failed dependency degrades the page, never the status.

Routes: ``/``, ``/health``, ``/productpage``, ``POST /login`` (form field
``username``, sets the ``user`` cookie), ``/logout``, ``/api/v1/products``,
``/api/v1/products/{id}``, ``/api/v1/products/{id}/reviews`` and
``/api/v1/products/{id}/ratings``.

Every outbound call carries ``end-user`` (the ``user`` cookie, else the
incoming ``end-user`` header) and the incoming tracing headers.
Timeouts can be tuned with DETAILS_TIMEOUT, REVIEWS_TIMEOUT, RATINGS_TIMEOUT.
"""

import html
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

DETAILS_TIMEOUT = c.env_float("DETAILS_TIMEOUT", 3.0)
REVIEWS_TIMEOUT = c.env_float("REVIEWS_TIMEOUT", 3.0)
RATINGS_TIMEOUT = c.env_float("RATINGS_TIMEOUT", 3.0)
REVIEWS_ATTEMPTS = 2  # the first call plus one retry

DETAILS_ERROR = "Sorry, product details are currently unavailable for this book."
REVIEWS_ERROR = "Sorry, product reviews are currently unavailable for this book."
RATINGS_ERROR = "Sorry, product ratings are currently unavailable for this book."

PRODUCTS = [{
    "id": 0,
    "title": "The Comedy of Errors",
    "descriptionHtml": (
        '<a href="https://en.wikipedia.org/wiki/The_Comedy_of_Errors">Wikipedia Summary</a>: '
        "The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his "
        "shortest and one of his most farcical comedies, with a major part of the humour "
        "coming from slapstick and mistaken identity, in addition to puns and word play."
    ),
}]
DETAIL_FIELDS = (("type", "Type"), ("pages", "Pages"), ("publisher", "Publisher"),
                 ("language", "Languages"), ("ISBN-10", "ISBN-10"), ("ISBN-13", "ISBN-13"))
USER_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
API_RE = re.compile(r"^/api/v1/products/(-?\d+)(/reviews|/ratings)?$")
esc = html.escape


def current_user(req):
    for user in (req.cookie("user"), req.header("end-user")):
        if USER_RE.match(user):
            return user
    return ""


def outbound_headers(req):
    headers = req.forward_headers()
    user = current_user(req)
    if user:
        headers["end-user"] = user
    else:
        headers.pop("end-user", None)
    return headers


def call(service, path, headers, timeout, attempts=1):
    """Return (status, data); status is 503 and data None when the call failed."""
    status, data = 503, None
    for attempt in range(attempts):
        try:
            status, data = c.get_json(c.service_url(service, path), headers, timeout)
        except c.UpstreamError as exc:
            c.log(f"{service} attempt {attempt + 1} failed: {exc}")
            status, data = 503, None
            continue
        if status == 200:
            return status, data
        c.log(f"{service} attempt {attempt + 1} returned {status}")
    return status, None


def get_details(pid, headers):
    return call("details", f"/details/{pid}", headers, DETAILS_TIMEOUT)


def get_reviews(pid, headers):
    return call("reviews", f"/reviews/{pid}", headers, REVIEWS_TIMEOUT, REVIEWS_ATTEMPTS)


def get_ratings(pid, headers):
    return call("ratings", f"/ratings/{pid}", headers, RATINGS_TIMEOUT)


# --------------------------------------------------------------------------- HTML

PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 0 2em 2em; max-width: 60em; }}
nav {{ display: flex; justify-content: space-between; align-items: center;
      background: #333; color: #fff; padding: .6em 1em; margin: 0 -2em 1em; }}
nav a, nav button {{ color: #fff; }}
.columns {{ display: flex; gap: 3em; }} .columns > section {{ flex: 1; }}
blockquote {{ border-left: 4px solid #ccc; margin: 1em 0; padding: .2em 1em; }}
.stars {{ font-size: 1.3em; }} .error {{ color: #a00; }}
</style></head>
<body>
<nav><a href="/productpage">BookInfo Sample</a><span>{user}</span></nav>
{body}
</body></html>
"""


def render_user(user):
    if user:
        return (f'<span class="user">Signed in as {esc(user)}</span> '
                '<form method="post" action="/logout" style="display:inline">'
                '<button type="submit">Sign out</button></form>')
    return ('<form method="post" action="/login">'
            '<input name="username" placeholder="User Name" size="12"> '
            '<button type="submit">Sign in</button></form>')


def render_details(details):
    if details is None:
        return f'<h4 class="error">{DETAILS_ERROR}</h4>'
    rows = "".join(f"<dt>{label}:</dt><dd>{esc(str(details.get(key, '')))}</dd>"
                   for key, label in DETAIL_FIELDS)
    return f'<h4>Book Details</h4><dl class="details">{rows}</dl>'


def render_rating(rating):
    if rating is None:
        return ""
    if "error" in rating:
        return f'<p class="error"><i>{esc(str(rating["error"]))}</i></p>'
    try:
        stars = max(0, min(5, int(rating.get("stars", 0))))
    except (TypeError, ValueError):
        stars = 0
    color = "red" if rating.get("color") == "red" else "black"
    return (f'<span class="stars" style="color: {color}" title="{stars} of 5 stars">'
            f'{"★" * stars}{"☆" * (5 - stars)}</span>')


def render_reviews(reviews):
    if reviews is None:
        return f'<h4 class="error">{REVIEWS_ERROR}</h4>'
    parts = ["<h4>Book Reviews</h4>"]
    for review in reviews.get("reviews", []):
        parts.append(f'<blockquote class="review"><p>{esc(str(review.get("text", "")))}</p>'
                     f'<small>{esc(str(review.get("reviewer", "")))}</small>'
                     f'{render_rating(review.get("rating"))}</blockquote>')
    parts.append('<p class="served-by">Reviews served by: '
                 f'{esc(str(reviews.get("podname", "unknown")))}</p>')
    return "".join(parts)


def product_page(req):
    user = current_user(req)
    headers = outbound_headers(req)
    product = PRODUCTS[0]
    _, details = get_details(product["id"], headers)
    _, reviews = get_reviews(product["id"], headers)
    body = (f'<h2 class="title">{esc(product["title"])}</h2>'
            f'<p class="summary">{product["descriptionHtml"]}</p>'
            f'<div class="columns"><section>{render_details(details)}</section>'
            f'<section>{render_reviews(reviews)}</section></div>')
    return c.html_reply(200, PAGE.format(title="Simple Bookstore App",
                                         user=render_user(user), body=body))


def index_page():
    body = ("<h2>Hello! This is a simple bookstore application consisting of four services "
            "as shown below</h2><p>productpage &rarr; details, reviews (v1, v2, v3) &rarr; "
            'ratings</p><p><a href="/productpage?u=normal">Normal user</a> | '
            '<a href="/productpage?u=test">Test user</a></p>')
    return c.html_reply(200, PAGE.format(title="Simple Bookstore App", user="", body=body))


def redirect(location, cookie):
    return c.reply(302, "", headers=[("Location", location), ("Set-Cookie", cookie)])


def login(req):
    user = req.form().get("username", "").strip()
    if not USER_RE.match(user):
        return c.html_reply(400, "<p>Invalid user name.</p>")
    return redirect("/productpage", f"user={user}; Path=/; HttpOnly; SameSite=Lax")


def logout():
    return redirect("/productpage", "user=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")


def api(req, match):
    pid, sub = int(match.group(1)), match.group(2)
    headers = outbound_headers(req)
    if sub is None:
        status, data = get_details(pid, headers)
        error = DETAILS_ERROR
    elif sub == "/reviews":
        status, data = get_reviews(pid, headers)
        error = REVIEWS_ERROR
    else:
        status, data = get_ratings(pid, headers)
        error = RATINGS_ERROR
    if data is None:
        return c.json_reply(status if status >= 400 else 503, {"error": error})
    return c.json_reply(200, data)


def app(req):
    path, method = req.path, req.method
    if path == "/login" and method == "POST":
        return login(req)
    if path == "/logout" and method in ("GET", "POST"):
        return logout()
    if method not in ("GET", "HEAD"):
        return c.json_reply(405, {"error": "method not allowed"}, [("Allow", "GET, HEAD")])
    if path == "/health":
        return c.json_reply(200, {"status": "Product page is healthy"})
    if path in ("/", "/index.html"):
        return index_page()
    if path == "/productpage":
        return product_page(req)
    if path == "/api/v1/products":
        return c.json_reply(200, PRODUCTS)
    match = API_RE.match(path)
    if match:
        return api(req, match)
    return c.json_reply(404, {"error": "not found"})


if __name__ == "__main__":
    c.serve(app)
