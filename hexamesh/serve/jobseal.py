"""Job records in the DHT, sealed so that only swarm members read them.

A durable job's record (its prompt, its answer) is stored by the DHT's
record holders, kept in their memory for ``JOB_TTL`` and handed on as
holders come and go. Datagrams are sealed on the wire already; the record is
sealed too, under a key derived from the swarm key (each key of the ring
opens, so rotation loses no job), with the record's DHT key as associated
data, so a record cannot be replayed under another job's key. A value that
does not open is dropped like a malformed one.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from hexamesh.wire import KeyRing

__all__ = ["JobSeal"]

VERSION = 1  # the first byte of a sealed record
NONCE = 12  # bytes of a random ChaCha20-Poly1305 nonce (records are few: no counter needed)


def _derive(swarm_key: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(
        hashlib.blake2b(swarm_key, digest_size=32, person=b"hexamesh-jobs-v1").digest()
    )


class JobSeal:
    def __init__(self, keyring: KeyRing) -> None:
        self._ring = keyring
        self._for: tuple[bytes, ...] = ()
        self._derived: list[ChaCha20Poly1305] = []

    @property
    def _aeads(self) -> list[ChaCha20Poly1305]:
        """One per key of the ring, derived again when a rotation changed it."""
        if self._for != self._ring.keys:
            self._for, self._derived = self._ring.keys, [_derive(k) for k in self._ring.keys]
        return self._derived

    def seal(self, key: str, value: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return bytes([VERSION]) + nonce + self._aeads[0].encrypt(nonce, value, key.encode())

    def open(self, key: str, sealed: bytes) -> bytes | None:
        """The record, or None if no key of the ring opens it (or it is not one)."""
        if len(sealed) < 1 + NONCE or sealed[0] != VERSION:
            return None
        nonce, body = sealed[1 : 1 + NONCE], sealed[1 + NONCE :]
        for aead in self._aeads:
            try:
                return aead.decrypt(nonce, body, key.encode())
            except InvalidTag:
                continue
        return None
