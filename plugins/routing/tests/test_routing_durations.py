"""Istio duration strings."""

from __future__ import annotations

import pytest

from knotwork_routing.durations import parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("0.5s", 0.5), ("3s", 3.0), ("1m", 60.0), ("1h", 3600.0), ("250ms", 0.25), ("1m30s", 90.0),
    ("1h2m3.5s", 3723.5), ("100us", 0.0001), ("100µs", 0.0001), ("5ns", 5e-9), ("0s", 0.0), (".5s", 0.5),
    (" 2s ", 2.0),
])
def test_parses(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "3", "s", "3x", "1m 30s", "-1s", "1.5.2s", 3, None, 1.5])
def test_refuses(value):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)
