"""Base64url without padding: how keys, secrets and signatures are written in
files, tokens and JSON (RFC 4648 §5, as JWTs and WireGuard configs do)."""

from __future__ import annotations

import base64
import binascii

__all__ = ["decode", "encode"]


def encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def decode(text: object) -> bytes:
    """The bytes of base64url ``text`` (padded or not); ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError("not base64url text")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64url text") from None
