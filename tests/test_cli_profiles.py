"""Profile rules that need no server: which URLs would send a key in clear."""

from __future__ import annotations

import pytest

from berth.cli.profiles import sends_key_in_clear


@pytest.mark.parametrize(
    ("url", "in_clear"),
    [
        ("https://berth.example.com", False),
        ("https://10.0.0.7:8321", False),
        ("http://127.0.0.1:8321", False),
        ("http://127.8.9.10", False),
        ("http://localhost:8321", False),
        ("http://[::1]:8321", False),
        ("http://berth.example.com", True),
        ("http://10.0.0.7:8321", True),
        ("http://[2001:db8::1]:8321", True),
    ],
)
def test_plain_http_beyond_loopback_sends_the_key_in_clear(url: str, in_clear: bool) -> None:
    assert sends_key_in_clear(url) is in_clear
