"""Where ``fleet`` finds its server and token: flags, ``FLEET_*`` variables, a login URL."""

from __future__ import annotations

import argparse
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .client import UsageError

__all__ = ["Settings", "settings_from", "tls_context"]


@dataclass(frozen=True)
class Settings:
    url: str
    token: str
    ca_file: str | None = None

    def __repr__(self) -> str:  # never print the token
        return f"Settings(url={self.url!r}, token='***')"


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """Server URL and token: flag > ``FLEET_*`` variable > a ``?token=`` in the URL.

    Raises:
        UsageError: saying which flag or variable to set.
    """
    url = getattr(args, "url", None) or environ.get("FLEET_URL", "")
    if not url:
        raise UsageError("no server URL: pass --url URL or set FLEET_URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"the server URL must look like http://HOST:PORT, not {url!r}")
    token = getattr(args, "token", None)
    if not token and getattr(args, "token_file", None):
        token = _read_token(args.token_file, "--token-file")
    if not token:
        token = environ.get("FLEET_TOKEN")
    if not token and environ.get("FLEET_TOKEN_FILE"):
        token = _read_token(environ["FLEET_TOKEN_FILE"], "FLEET_TOKEN_FILE")
    if not token:  # the login URL fleet-server prints carries the token
        token = urllib.parse.parse_qs(parts.query).get("token", [""])[0]
    if not token:
        raise UsageError(
            "no API token: pass --token TOKEN or --token-file FILE, or set FLEET_TOKEN "
            "(the server keeps it in <data-dir>/admin.token)"
        )
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    ca_file = getattr(args, "ca_file", None) or environ.get("FLEET_CA_FILE") or None
    return Settings(base, token, ca_file)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot use the CA file {settings.ca_file}: {exc}") from exc


def _read_token(path: str, where: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"cannot read the token file {path} ({where}): {exc}") from exc
    if not token:
        raise UsageError(f"the token file {path} ({where}) is empty")
    return token
