"""What the agent tells the server about its machine in ``AgentHandshake``."""

from __future__ import annotations

import platform
import socket
from pathlib import Path

import fleet
from fleet.proto import agent_service as pb

__all__ = ["describe_host"]

_OS_TYPES = {
    "Linux": pb.OsType.LINUX,
    "Darwin": pb.OsType.MACOS,
    "Windows": pb.OsType.WINDOWS,
}


def describe_host() -> pb.AgentHandshake:
    """Describe this machine: hostname, OS, architecture, kernel and agent version.

    ``agent_id_hint`` is the systemd machine id when there is one (stable across reinstalls of
    the agent, not across OS reinstalls). ``public_ip_addresses`` stays empty: finding them needs
    a network round trip, and the server sees the peer address anyway.
    """
    uname = platform.uname()
    return pb.AgentHandshake(
        agent_id_hint=_machine_id(),
        agent_version=fleet.__version__,
        os_type=_OS_TYPES.get(uname.system, pb.OsType.OTHER),
        os_name=_os_name(uname.system, uname.release),
        arch=uname.machine,
        hostname=socket.gethostname(),
        kernel_version=uname.release,
    )


def _os_name(system: str, release: str) -> str:
    if system == "Linux":
        try:
            info = platform.freedesktop_os_release()
        except OSError:
            return "Linux"
        return info.get("PRETTY_NAME") or info.get("NAME") or "Linux"
    if system == "Darwin":
        version = platform.mac_ver()[0]
        return f"macOS {version}" if version else "macOS"
    return f"{system} {release}".strip()


def _machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text:
            return text
    return ""
