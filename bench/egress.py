"""What the connect-time address check of the tenant-facing HTTP client costs.

The check runs once per new connection (a pooled keep-alive connection pays nothing), in
the connector's socket factory (:func:`relay.egress.public_socket`). This times, per call:
the address predicate on a fresh address (IPv4 and IPv6), the same with the per-process
cache warm (every connection after the first to one address), and the socket factory
against a bare ``socket.socket`` (what the connector would do without the check).

    .venv/bin/python bench/egress.py
"""

from __future__ import annotations

import ipaddress
import json
import socket
import timeit
from collections.abc import Callable

from relay.egress import public_host, public_socket
from relay.urls import is_public_address

V4 = "93.184.215.14"
V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
ADDR_INFO = (socket.AF_INET, socket.SOCK_STREAM, 6, "", (V4, 443))


def per_call_us(stmt: Callable[[], object], number: int) -> float:
    best = min(timeit.repeat(stmt, number=number, repeat=5))
    return best / number * 1e6


def bare_socket() -> None:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM, 6).close()


def checked_socket() -> None:
    public_socket(ADDR_INFO).close()


def main() -> None:
    n = 20000
    figures = {
        "predicate_v4_us": per_call_us(lambda: is_public_address(ipaddress.ip_address(V4)), n),
        "predicate_v6_us": per_call_us(lambda: is_public_address(ipaddress.ip_address(V6)), n),
        "cached_check_us": per_call_us(lambda: public_host(V4), n),
        "bare_socket_us": per_call_us(bare_socket, n),
        "checked_socket_us": per_call_us(checked_socket, n),
    }
    # Within the noise of making a socket: the check is a cache hit after the first time.
    figures["checked_minus_bare_us"] = figures["checked_socket_us"] - figures["bare_socket_us"]
    for name, value in figures.items():
        print(f"{name:28} {value:8.3f}")
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
