"""Tag override value expressions: the supported subset, missing values, and refusals."""

from __future__ import annotations

import pytest
from telemetry_helpers import Response, request

from knotwork_telemetry.expressions import compile_expression


@pytest.mark.parametrize(("text", "expected"), [
    ("'canary'", "canary"),
    ('"canary"', "canary"),
    ("request.host", "reviews:9080"),
    ("request.method", "POST"),
    ("request.path", "/reviews/0?x=1"),
    ("request.url_path", "/reviews/0"),
    ("request.protocol", "HTTP/1.1"),
    ("request.headers['x-tenant']", "acme"),
    ('request.headers["X-Tenant"]', "acme"),
    ("request.headers['x-missing']", "unknown"),
    ("request.headers['x-missing'] | 'none'", "none"),
    ("response.code", "201"),
])
def test_supported_expressions(text, expected):
    req = request("POST", "/reviews/0?x=1", headers={"x-tenant": "acme"})
    assert compile_expression(text)(req, Response(201)) == expected


def test_on_a_tcp_connection_request_values_are_missing():
    assert compile_expression("request.headers['x-tenant'] | 'tcp'")(None, object()) == "tcp"
    assert compile_expression("response.code")(None, object()) == "unknown"


@pytest.mark.parametrize("text", ["", "request.body", "request.headers[x]", "size(request.path)",
                                  "request.method | default"])
def test_anything_else_is_refused_naming_what_is_supported(text):
    with pytest.raises(ValueError, match="expected|unsupported"):
        compile_expression(text)
