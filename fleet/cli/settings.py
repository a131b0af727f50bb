"""Where ``fleet`` finds its server and token: flags, ``FLEET_*`` variables, a login URL, or
the token ``fleet login`` stored for that server.

``fleet login`` keeps one token per server URL in ``$XDG_CONFIG_HOME/fleet/credentials.json``
(``~/.config/fleet/`` without XDG_CONFIG_HOME), a file only its owner can read or write (0600,
in a 0700 directory), written whole through a temporary file so a crash never leaves half.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .client import UsageError

__all__ = [
    "Settings",
    "credentials_path",
    "forget_token",
    "settings_from",
    "store_token",
    "stored_token",
    "tls_context",
]


@dataclass(frozen=True)
class Settings:
    url: str
    token: str
    ca_file: str | None = None

    def __repr__(self) -> str:  # never print the token
        return f"Settings(url={self.url!r}, token='***')"


def settings_from(
    args: argparse.Namespace, environ: dict[str, str], *, need_token: bool = True
) -> Settings:
    """Server URL and token: flag > ``FLEET_*`` variable > a ``?token=`` in the URL > the token
    ``fleet login`` stored for that URL. ``need_token=False`` (``fleet login``) allows none.

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
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    if not token:
        token = str((stored_token(environ, base) or {}).get("token", ""))
    if not token and need_token:
        raise UsageError(
            "no API token: run `fleet login`, pass --token TOKEN or --token-file FILE, or set "
            "FLEET_TOKEN (the server keeps the admin's in <data-dir>/admin.token)"
        )
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


def credentials_path(environ: dict[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/fleet/credentials.json`` (``~/.config`` without XDG_CONFIG_HOME)."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "fleet" / "credentials.json"


def _key(url: str) -> str:
    return url.rstrip("/")


def _load(path: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the stored logins in {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def stored_token(environ: dict[str, str], url: str) -> dict[str, object] | None:
    """What ``fleet login`` stored for ``url`` (``{"token", "id", "username"}``), if anything."""
    entry = _load(credentials_path(environ)).get(_key(url))
    return entry if isinstance(entry, dict) and isinstance(entry.get("token"), str) else None


def _save(path: Path, data: dict[str, dict[str, object]]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(temp, 0o600)  # whatever the umask did
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def store_token(environ: dict[str, str], url: str, entry: dict[str, object]) -> Path:
    """Keep ``entry`` (with its token) for ``url``; return the file (mode 0600)."""
    path = credentials_path(environ)
    data = _load(path)
    data[_key(url)] = entry
    _save(path, data)
    return path


def forget_token(environ: dict[str, str], url: str) -> dict[str, object] | None:
    """Drop what was stored for ``url``; return it (``None`` if nothing was)."""
    path = credentials_path(environ)
    data = _load(path)
    entry = data.pop(_key(url), None)
    if entry is not None:
        _save(path, data)
    return entry
