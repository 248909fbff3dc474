"""Whether a host is this machine: the one test behind "secrets go off this machine only where
the deployment says so" (the exchange's base URL, the database URL without TLS)."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str | None) -> bool:
    """`localhost`, a loopback address (127.0.0.0/8, ::1) or a Unix socket path."""
    if not host:
        return False
    if host.startswith("/") or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
