"""Signed peer-to-peer HTTP: only swarm members may use a peer as a relay.

A forwarded request carries ``x-hexamesh-*`` headers: the sender's node id,
the time, how many forwards it has taken, the node ids on its path, and an
HMAC-SHA256 over all of them plus the method, target and a SHA-256 of the
body. The HMAC key is derived (HKDF) from the swarm key, so every member can
sign and check and nobody else can; each key of the ring is tried, so key
rotation does not break forwarding. A signature is good for ``MAX_SKEW``
seconds either side of the receiver's clock and only once (a replay within
the window is refused).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hexamesh.wire import KeyRing

__all__ = ["PeerAuthError", "PeerSigner", "SignedRoute"]

MAX_SKEW = 30.0  # s; peers' clocks must agree this well (DHT expiries need it too)
REPLAY_CACHE = 65536  # signatures remembered to refuse replays within the window
H_NODE, H_TIME, H_FORWARDS, H_PATH, H_NONCE, H_SIG = (
    "x-hexamesh-node",
    "x-hexamesh-time",
    "x-hexamesh-forwards",
    "x-hexamesh-path",
    "x-hexamesh-nonce",  # two identical requests in the same millisecond differ by it
    "x-hexamesh-sig",
)


class PeerAuthError(Exception):
    """A forwarded request whose signature is missing, wrong, stale or replayed."""


@dataclass(frozen=True, slots=True)
class SignedRoute:
    """What a checked signature vouches for."""

    sender: bytes  # node id of the peer that forwarded
    forwards: int  # forwards taken so far, this one included
    path: tuple[bytes, ...]  # node ids the request went through, sender last


def _derive(key: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"hexamesh peer http v1")
    return hkdf.derive(key)


def _message(
    method: str, target: str, t: str, node: str, fwd: str, path: str, nonce: str, body: bytes
) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((method, target, t, node, fwd, path, nonce, digest)).encode()


class PeerSigner:
    def __init__(self, keyring: KeyRing, node: bytes) -> None:
        self._keys = [_derive(k) for k in keyring.keys]
        self.node = node
        self._seen: OrderedDict[str, float] = OrderedDict()

    def headers(
        self, method: str, target: str, body: bytes, route: SignedRoute | None, now: float
    ) -> list[tuple[str, str]]:
        """Headers for forwarding a request that reached us along ``route``."""
        forwards = (route.forwards if route else 0) + 1
        path = ",".join(n.hex() for n in (*(route.path if route else ()), self.node))
        t = f"{now:.3f}"
        node, fwd, nonce = self.node.hex(), str(forwards), secrets.token_hex(8)
        msg = _message(method, target, t, node, fwd, path, nonce, body)
        sig = hmac.new(self._keys[0], msg, hashlib.sha256).hexdigest()
        return [
            (H_NODE, node),
            (H_TIME, t),
            (H_FORWARDS, fwd),
            (H_PATH, path),
            (H_NONCE, nonce),
            (H_SIG, sig),
        ]

    def verify(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes, now: float
    ) -> SignedRoute:
        """Check a forwarded request's signature; raises PeerAuthError."""
        try:
            node, t, fwd, path, nonce, sig = (
                headers[h] for h in (H_NODE, H_TIME, H_FORWARDS, H_PATH, H_NONCE, H_SIG)
            )
        except KeyError as e:
            raise PeerAuthError(f"missing {e.args[0]} header") from None
        try:
            sent = float(t)
            forwards = int(fwd)
            hops = tuple(bytes.fromhex(n) for n in path.split(",") if n)
            sender = bytes.fromhex(node)
        except ValueError:
            raise PeerAuthError("malformed peer headers") from None
        if abs(now - sent) > MAX_SKEW:
            raise PeerAuthError(f"signature time {sent:.0f} is more than {MAX_SKEW:.0f} s off")
        msg = _message(method, target, t, node, fwd, path, nonce, body)
        if not any(
            hmac.compare_digest(hmac.new(k, msg, hashlib.sha256).hexdigest(), sig)
            for k in self._keys
        ):
            raise PeerAuthError("bad signature (not signed with this swarm's key)")
        if sig in self._seen:
            raise PeerAuthError("replayed signature")
        self._seen[sig] = sent
        while len(self._seen) > REPLAY_CACHE or (
            self._seen and next(iter(self._seen.values())) < now - 2 * MAX_SKEW
        ):
            self._seen.popitem(last=False)
        if not hops or hops[-1] != sender or forwards != len(hops):
            raise PeerAuthError("peer path does not match the sender and forward count")
        return SignedRoute(sender, forwards, hops)
