"""Swarm key files and join tokens.

A swarm key file is text: one base64url key per line, the primary (sealing) key
first, older keys after it (accepted to open during a rotation); blank lines and
``#`` comments are ignored. Like the node key it must not be readable by group
or others.

A join token bundles a bootstrap address with the primary key, and the
public keys of the swarm's operators (whose placement orders the new member
will obey), so a new member needs one string:
``hxm1.<base64url(msgpack [host, port, key, [operator keys]])>``. Treat it as
a secret: it lets its holder join and read the swarm.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import msgpack

from hexamesh import b64url
from hexamesh.identity import PUBLIC_KEY_BYTES, write_secret_file
from hexamesh.wire import KEY_BYTES, KeyRing

__all__ = [
    "SWARM_KEY_FILE_NAME",
    "JoinToken",
    "SwarmKeyError",
    "create_key_file",
    "load_key_file",
    "replace_key_file",
    "save_key_file",
]

SWARM_KEY_FILE_NAME = "swarm.key"
MAX_TOKEN_OPERATORS = 16  # operator keys one token may carry
_TOKEN_PREFIX = "hxm1."


class SwarmKeyError(Exception):
    """A swarm key file or join token is missing, malformed or unsafe."""


def _b64(data: bytes) -> str:
    return b64url.encode(data)


def _unb64(text: str) -> bytes:
    try:
        return b64url.decode(text)
    except ValueError as e:
        raise SwarmKeyError(str(e)) from None


def create_key_file(path: Path) -> KeyRing:
    """Write a new random swarm key to ``path`` (mode 0600); never overwrites."""
    return save_key_file(path, KeyRing.generate())


def save_key_file(path: Path, ring: KeyRing) -> KeyRing:
    """Write ``ring`` to ``path`` (mode 0600), primary first; never overwrites."""
    if path.exists():
        raise SwarmKeyError(f"{path} exists already; refusing to overwrite a swarm key")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_secret_file(path, _key_file_text(ring))
    return ring


def replace_key_file(path: Path, ring: KeyRing) -> None:
    """Write ``ring`` over ``path`` (mode 0600), whole or not at all (a key
    rotation's steps)."""
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    write_secret_file(tmp, _key_file_text(ring))
    os.replace(tmp, path)


def _key_file_text(ring: KeyRing) -> bytes:
    text = "# hexamesh swarm key: primary first, older keys below during a rotation\n"
    return (text + "".join(_b64(k) + "\n" for k in ring.keys)).encode()


def load_key_file(path: Path) -> KeyRing:
    if not path.exists():
        raise SwarmKeyError(
            f"no swarm key at {path}: create one with `hexamesh swarm init` on the first "
            "node, or join with the token from `hexamesh swarm invite`"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SwarmKeyError(
            f"{path} is readable by others (mode {mode:04o}); run `chmod 600 {path}`"
        )
    keys = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key = _unb64(line)
        if len(key) != KEY_BYTES:
            raise SwarmKeyError(f"{path}:{n}: a swarm key has {KEY_BYTES} bytes, got {len(key)}")
        keys.append(key)
    if not keys:
        raise SwarmKeyError(f"{path} holds no key")
    try:
        return KeyRing(keys[0], keys[1:])
    except ValueError as e:
        raise SwarmKeyError(f"{path}: {e}") from None


@dataclass(frozen=True, slots=True)
class JoinToken:
    host: str
    port: int
    key: bytes
    operators: tuple[bytes, ...] = ()  # operator public keys the joiner will trust

    def encode(self) -> str:
        fields = [self.host, self.port, self.key, list(self.operators)]
        return _TOKEN_PREFIX + _b64(msgpack.packb(fields))

    @classmethod
    def decode(cls, token: str) -> JoinToken:
        token = token.strip()
        if not token.startswith(_TOKEN_PREFIX):
            raise SwarmKeyError(f"a join token starts with {_TOKEN_PREFIX!r}")
        try:
            host, port, key, *rest = msgpack.unpackb(_unb64(token[len(_TOKEN_PREFIX) :]))
        except SwarmKeyError:
            raise
        except Exception:
            raise SwarmKeyError("join token is corrupted") from None
        operators = rest[0] if rest else []  # tokens of before operator keys have none
        if (
            not isinstance(host, str)
            or type(port) is not int
            or not 0 < port < 65536
            or not isinstance(key, bytes)
            or len(key) != KEY_BYTES
            or len(rest) > 1
            or not isinstance(operators, list)
            or len(operators) > MAX_TOKEN_OPERATORS
            or not all(isinstance(o, bytes) and len(o) == PUBLIC_KEY_BYTES for o in operators)
        ):
            raise SwarmKeyError("join token is corrupted")
        return cls(host, port, key, tuple(operators))
