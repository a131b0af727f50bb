"""The CSRF rule on its own: what a cookie-authenticated request must show, and the server's
own origin (from the request, or ``--public-url`` behind a reverse proxy)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from fleet.server.config import ConfigError, ServerConfig
from fleet.server.http.common import ApiError
from fleet.server.http.csrf import check_cookie_websocket, check_cookie_write, origin_of


def _request(
    method: str = "POST",
    *,
    mimetype: str = "application/json",
    origin: str | None = "http://fleet.test:8080",
    host: str = "fleet.test:8080",
    scheme: str = "http",
) -> SimpleNamespace:
    headers = {"Host": host} | ({"Origin": origin} if origin is not None else {})
    return SimpleNamespace(method=method, mimetype=mimetype, headers=headers, scheme=scheme)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://Fleet.Test:8080/", "http://fleet.test:8080"),
        ("https://fleet.test:443", "https://fleet.test"),
        ("http://fleet.test:80", "http://fleet.test"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("null", None),
        ("file:///etc/passwd", None),
        ("http://user:pw@fleet.test", None),
        ("http://fleet.test:99999", None),
        ("", None),
    ],
)
def test_origin_of(url: str, origin: str | None) -> None:
    assert origin_of(url) == origin


def test_reads_pass_and_writes_need_json_from_this_origin() -> None:
    for method in ("GET", "HEAD", "OPTIONS"):
        check_cookie_write(_request(method, mimetype="text/plain", origin=None))
    check_cookie_write(_request())
    check_cookie_write(_request(origin="http://FLEET.test:8080"))
    for bad, status in (
        (_request(mimetype="text/plain"), 415),
        (_request("DELETE", mimetype=""), 415),
        (_request(mimetype="application/x-www-form-urlencoded"), 415),
        (_request(origin=None), 403),
        (_request(origin="null"), 403),
        (_request(origin="https://fleet.test:8080"), 403),  # the scheme counts
        (_request(origin="http://fleet.test:8081"), 403),  # a sibling port
        (_request(origin="http://evil.fleet.test:8080"), 403),  # a sibling subdomain
        (_request(host="fleet.test:8080/evil"), 403),
    ):
        with pytest.raises(ApiError) as info:
            check_cookie_write(bad)
        assert info.value.status == status


def test_a_websocket_maps_its_scheme_to_the_page_s() -> None:
    check_cookie_websocket(_request("GET", scheme="ws"))
    check_cookie_websocket(
        _request("GET", scheme="wss", origin="https://fleet.test", host="fleet.test")
    )
    with pytest.raises(ApiError):
        check_cookie_websocket(_request("GET", scheme="wss"))  # page http, socket wss
    with pytest.raises(ApiError):
        check_cookie_websocket(_request("GET", scheme="ws", origin=None))


def test_behind_a_tls_proxy_the_public_url_is_the_origin() -> None:
    public = "https://fleet.example.com"
    behind = _request(origin=public, host="fleet.example.com", scheme="http")
    with pytest.raises(ApiError):
        check_cookie_write(behind)  # the server sees http: without --public-url, refused
    check_cookie_write(behind, public_url=public + "/")
    with pytest.raises(ApiError):
        check_cookie_write(_request(origin="http://fleet.example.com"), public_url=public)


@pytest.mark.parametrize(
    "url", ["fleet.example.com", "ftp://x", "https://x/path", "https://x?q", "https://u@x"]
)
def test_public_url_is_checked_at_start(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="--public-url"):
        ServerConfig(data_dir=tmp_path, public_url=url)
    assert ServerConfig(data_dir=tmp_path, public_url="https://x:8443/").public_url
