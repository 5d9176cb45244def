"""Listening sockets bound the way ``loop.create_server`` binds them, for servers that accept
their connections themselves (to count them and to bound their handshakes): the Coordinator's
APIs and the proxy's listeners."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

__all__ = ["AddressInfo", "listening_sockets"]

# One entry of what ``getaddrinfo`` returns: family, type, protocol, canonical name, address.
AddressInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


def listening_sockets(infos: Iterable[AddressInfo], backlog: int) -> list[socket.socket]:
    """One non-blocking listening socket per distinct address of ``infos`` (what
    ``getaddrinfo`` gave for a host with ``AI_PASSIVE``); IPv6 sockets take IPv6 only, so
    that an IPv4 address of the same host binds beside them. All or none: on an error the
    sockets already bound are closed."""
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound
