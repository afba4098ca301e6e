"""Node identity: an Ed25519 key pair kept in the agent's data dir.

The node id is the 160-bit BLAKE2b hash of the raw public key, so an id cannot
be chosen freely (it costs a key pair per try, and anyone can check that an id
belongs to a public key). Kademlia's XOR metric works on these 20 bytes.

The private key file is created on first start with mode 0600; an agent refuses
to start when the file is readable by group or others, as ssh does, because
whoever reads it can impersonate the node.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

__all__ = [
    "KEY_FILE_NAME",
    "NODE_ID_BYTES",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "Identity",
    "IdentityError",
    "node_id_for",
    "short_id",
    "verify",
    "write_secret_file",
]

log = logging.getLogger(__name__)

NODE_ID_BYTES = 20  # 160-bit ids, as in Kademlia §2
PUBLIC_KEY_BYTES = 32  # raw Ed25519 public key
SIGNATURE_BYTES = 64  # raw Ed25519 signature
KEY_FILE_NAME = "node.key"
_PRIVATE_KEY_BYTES = 32


class IdentityError(Exception):
    """The key file is missing, malformed or unsafe; the message says how to fix it."""


def node_id_for(public_key: bytes) -> bytes:
    """160-bit BLAKE2b digest of a raw 32-byte Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(
            f"an Ed25519 public key has {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}"
        )
    return hashlib.blake2b(public_key, digest_size=NODE_ID_BYTES).digest()


def short_id(node_id: bytes) -> str:
    """First 8 hex digits: enough to tell nodes apart in logs and tables."""
    return node_id[:4].hex()


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``data``.

    Malformed keys or signatures are simply invalid: this never raises, because
    both come from peers.
    """
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """A node's key pair and the id derived from it."""

    private_key: Ed25519PrivateKey = field(repr=False)
    public_key: bytes
    node_id: bytes

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Identity:
        if len(raw) != _PRIVATE_KEY_BYTES:
            raise IdentityError(f"an Ed25519 private key has 32 bytes, got {len(raw)}")
        key = Ed25519PrivateKey.from_private_bytes(raw)
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(private_key=key, public_key=public, node_id=node_id_for(public))

    @classmethod
    def generate(cls) -> Identity:
        key = Ed25519PrivateKey.generate()
        return cls.from_private_bytes(
            key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        )

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Identity:
        """Read ``data_dir/node.key``, creating it (mode 0600) on first start."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / KEY_FILE_NAME
        if not path.exists():
            identity = cls.generate()
            write_secret_file(path, identity.private_bytes())
            log.info("created node key %s (node id %s)", path, identity.node_id.hex())
            return identity
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise IdentityError(
                f"{path} is readable by others (mode {mode:04o}); "
                f"run `chmod 600 {path}` (anyone who reads it can impersonate this node)"
            )
        return cls.from_private_bytes(path.read_bytes())

    def private_bytes(self) -> bytes:
        return self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @property
    def short(self) -> str:
        return short_id(self.node_id)


def write_secret_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; never overwrite.

    The file is opened with O_EXCL and the mode set at creation, so there is no
    window in which it exists with looser permissions.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # umask cannot widen it, but be explicit
        os.write(fd, data)
    finally:
        os.close(fd)
