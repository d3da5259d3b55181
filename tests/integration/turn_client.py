"""A TURN client over UDP (RFC 5766 / 8656 with RFC 5389 long-term credentials), enough to allocate
a relay and ask for permissions: what a calling client does first with the credentials Synapse
hands out at /voip/turnServer.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass

MAGIC = 0x2112A442
ALLOCATE, REFRESH, CREATE_PERMISSION = 0x003, 0x004, 0x008
BINDING = 0x001
SUCCESS, ERROR = 0x100, 0x110

USERNAME, MESSAGE_INTEGRITY, ERROR_CODE = 0x0006, 0x0008, 0x0009
LIFETIME, XOR_PEER_ADDRESS, REALM, NONCE = 0x000D, 0x0012, 0x0014, 0x0015
XOR_RELAYED_ADDRESS, REQUESTED_TRANSPORT = 0x0016, 0x0019
UDP = 17


class TurnError(Exception):
    def __init__(self, method: str, code: int, reason: str):
        super().__init__(f"{method}: {code} {reason}")
        self.code = code


@dataclass
class Message:
    kind: int
    attrs: list[tuple[int, bytes]]

    def get(self, attr: int) -> bytes | None:
        return next((v for t, v in self.attrs if t == attr), None)

    def error(self) -> tuple[int, str]:
        value = self.get(ERROR_CODE) or b"\0\0\0\0"
        return (value[2] & 0x7) * 100 + value[3], value[4:].decode(errors="replace")


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def _xor_address(host: str, port: int) -> bytes:
    addr = int(ipaddress.IPv4Address(host)) ^ MAGIC
    return struct.pack("!BBHI", 0, 1, port ^ (MAGIC >> 16), addr)


def _parse_xor_address(value: bytes) -> tuple[str, int]:
    _zero, family, xport, xaddr = struct.unpack("!BBHI", value[:8])
    if family != 1:
        raise ValueError("only IPv4 relays are expected here")
    return str(ipaddress.IPv4Address(xaddr ^ MAGIC)), xport ^ (MAGIC >> 16)


def _parse(data: bytes) -> tuple[bytes, Message]:
    kind, length, cookie = struct.unpack("!HHI", data[:8])
    if cookie != MAGIC:
        raise ValueError("not a STUN message")
    txid, body, attrs = data[8:20], data[20:20 + length], []
    while body:
        t, n = struct.unpack("!HH", body[:4])
        attrs.append((t, body[4:4 + n]))
        body = body[4 + n + (-n % 4):]
    return txid, Message(kind, attrs)


class TurnClient:
    """One client socket, one allocation at a time. Credentials as Synapse issues them."""

    def __init__(self, server: tuple[str, int], username: str, password: str, timeout: float = 5.0):
        self.server, self.username, self.password = server, username, password
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.realm: bytes | None = None
        self.nonce: bytes | None = None

    def close(self) -> None:
        self.sock.close()

    def _key(self) -> bytes:
        assert self.realm is not None
        return hashlib.md5(f"{self.username}:{self.realm.decode()}:{self.password}".encode()).digest()

    def _encode(self, method: int, attrs: list[tuple[int, bytes]], txid: bytes, signed: bool) -> bytes:
        body = b"".join(_attr(t, v) for t, v in attrs)
        if signed:
            assert self.realm is not None and self.nonce is not None
            body += _attr(USERNAME, self.username.encode()) + _attr(REALM, self.realm) + _attr(NONCE, self.nonce)
            # The integrity covers the header with a length that already counts the MAC attribute.
            header = struct.pack("!HHI", method, len(body) + 24, MAGIC) + txid
            mac = hmac.new(self._key(), header + body, hashlib.sha1).digest()
            body += _attr(MESSAGE_INTEGRITY, mac)
        return struct.pack("!HHI", method, len(body), MAGIC) + txid + body

    def _exchange(self, method: int, attrs: list[tuple[int, bytes]], signed: bool) -> Message:
        txid = os.urandom(12)
        request = self._encode(method, attrs, txid, signed)
        for _attempt in range(3):
            self.sock.sendto(request, self.server)
            deadline = time.monotonic() + self.sock.gettimeout()  # type: ignore[operator]
            while time.monotonic() < deadline:
                try:
                    data, _addr = self.sock.recvfrom(2048)
                except TimeoutError:
                    break
                got, message = _parse(data)
                if got == txid:
                    return message
        raise TimeoutError(f"no answer from {self.server} to method {method:#x}")

    def request(self, method: int, attrs: list[tuple[int, bytes]], name: str) -> Message:
        """Send it signed once the server has named its realm and nonce; a challenge (401) or a
        stale nonce (438) is answered once with the nonce it carries."""
        for first in (True, False):
            reply = self._exchange(method, attrs, signed=self.nonce is not None)
            if reply.kind == method | SUCCESS:
                return reply
            code, reason = reply.error()
            if first and code in (401, 438) and reply.get(NONCE):
                self.realm = reply.get(REALM) or self.realm
                self.nonce = reply.get(NONCE)
                continue
            raise TurnError(name, code, reason)
        raise AssertionError("unreachable")

    def binding(self) -> None:
        reply = self._exchange(BINDING, [], signed=False)
        if reply.kind != BINDING | SUCCESS:
            raise TurnError("binding", *reply.error())

    def allocate(self) -> tuple[tuple[str, int], int]:
        """(relayed address, lifetime in seconds)."""
        reply = self.request(ALLOCATE, [(REQUESTED_TRANSPORT, bytes([UDP, 0, 0, 0]))], "allocate")
        relayed = reply.get(XOR_RELAYED_ADDRESS)
        lifetime = reply.get(LIFETIME)
        if relayed is None or lifetime is None:
            raise TurnError("allocate", 0, "success without a relayed address")
        return _parse_xor_address(relayed), struct.unpack("!I", lifetime)[0]

    def create_permission(self, peer: str) -> None:
        self.request(CREATE_PERMISSION, [(XOR_PEER_ADDRESS, _xor_address(peer, 0))], f"permission {peer}")

    def release(self) -> None:
        self.request(REFRESH, [(LIFETIME, struct.pack("!I", 0))], "release")
