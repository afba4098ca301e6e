"""Peer signatures: good ones pass once; tampering, other keys, skew and replays fail."""

from __future__ import annotations

import pytest

from hexamesh.serve.peerauth import MAX_SKEW, PeerAuthError, PeerSigner, SignedRoute
from hexamesh.wire import KeyRing

RING = KeyRing.generate()
A, B = b"a" * 20, b"b" * 20


def test_a_signature_checks_once_and_carries_the_route() -> None:
    a, b = PeerSigner(RING, A), PeerSigner(RING, B)
    h = dict(a.headers("POST", "/v1/completions", b"{}", None, 100.0))
    route = b.verify("POST", "/v1/completions", h, b"{}", 101.0)
    assert route == SignedRoute(A, 1, (A,))
    h2 = dict(b.headers("POST", "/v1/completions", b"{}", route, 102.0))
    assert PeerSigner(RING, b"c" * 20).verify(
        "POST", "/v1/completions", h2, b"{}", 102.0
    ) == SignedRoute(B, 2, (A, B))
    with pytest.raises(PeerAuthError, match="replayed"):
        b.verify("POST", "/v1/completions", h, b"{}", 101.0)


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("body", lambda h, body, now: (h, b"{1}", now)),
        ("skew", lambda h, body, now: (h, body, now + MAX_SKEW + 1)),
        ("path", lambda h, body, now: ({**h, "x-hexamesh-path": B.hex()}, body, now)),
        (
            "missing",
            lambda h, body, now: ({k: v for k, v in h.items() if k != "x-hexamesh-sig"}, body, now),
        ),
    ],
)
def test_tampering_is_refused(what: str, change) -> None:  # type: ignore[no-untyped-def]
    h = dict(PeerSigner(RING, A).headers("POST", "/v1/completions", b"{}", None, 100.0))
    h, body, now = change(h, b"{}", 100.0)
    with pytest.raises(PeerAuthError):
        PeerSigner(RING, B).verify("POST", "/v1/completions", h, body, now)


def test_old_keys_of_the_ring_still_verify() -> None:
    old = KeyRing.generate()
    h = dict(PeerSigner(old, A).headers("POST", "/x", b"", None, 5.0))
    rotated = KeyRing(KeyRing.generate().primary, [old.primary])
    assert PeerSigner(rotated, B).verify("POST", "/x", h, b"", 5.0).sender == A


def test_identical_requests_signed_in_the_same_instant_both_pass() -> None:
    a, b = PeerSigner(RING, A), PeerSigner(RING, B)
    h1 = dict(a.headers("POST", "/v1/completions", b"{}", None, 100.0))
    h2 = dict(a.headers("POST", "/v1/completions", b"{}", None, 100.0))
    assert b.verify("POST", "/v1/completions", h1, b"{}", 100.0).sender == A
    assert b.verify("POST", "/v1/completions", h2, b"{}", 100.0).sender == A
