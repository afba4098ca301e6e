"""Operator keys: who may order what the swarm runs.

The swarm key lets a machine take part; it does not let it decide what other
machines load. That needs an operator key (Ed25519, like a node key, but held
by a person, not by an agent): its private half signs placement orders
(``placement.order``); its public half is trusted by every agent. An agent
trusts, together:

* ``operator_keys`` from its configuration (base64url public keys);
* ``<data dir>/operators``: public keys, one per line, written when it
  joined with a token or an invite that carried them (``swarm token``,
  ``swarm invite``);
* the public half of ``<data dir>/operator.key`` if the operator keeps the
  private key on this machine (``swarm init`` writes one): this agent can
  then sign orders for its admin API.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterable
from pathlib import Path

from hexamesh import b64url
from hexamesh.identity import PUBLIC_KEY_BYTES, Identity, IdentityError, write_secret_file

__all__ = [
    "OPERATORS_FILE_NAME",
    "OPERATOR_KEY_FILE_NAME",
    "OperatorKeyError",
    "create_operator_key",
    "decode_public",
    "encode_public",
    "load_operator_key",
    "save_operators",
    "trusted_operators",
]

log = logging.getLogger(__name__)

OPERATOR_KEY_FILE_NAME = "operator.key"  # raw 32-byte Ed25519 private key, mode 0600
OPERATORS_FILE_NAME = "operators"  # trusted operator public keys, base64url, one per line


class OperatorKeyError(Exception):
    """An operator key is missing, malformed or unsafe."""


def encode_public(public: bytes) -> str:
    return b64url.encode(public)


def decode_public(text: str) -> bytes:
    text = text.strip()
    try:
        raw = b64url.decode(text)
    except ValueError:
        raise OperatorKeyError(f"not a base64url operator key: {text[:20]!r}") from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise OperatorKeyError(
            f"an operator key has {PUBLIC_KEY_BYTES} bytes, got {len(raw)}: {text[:20]!r}"
        )
    return raw


def create_operator_key(path: Path) -> Identity:
    """Write a new operator key to ``path`` (mode 0600); never overwrites."""
    if path.exists():
        raise OperatorKeyError(f"{path} exists already; refusing to overwrite an operator key")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Identity.generate()
    write_secret_file(path, key.private_bytes())
    return key


def load_operator_key(path: Path) -> Identity:
    if not path.exists():
        raise OperatorKeyError(
            f"no operator key at {path}: `hexamesh swarm init` writes one beside the swarm key"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise OperatorKeyError(
            f"{path} is readable by others (mode {mode:04o}); run `chmod 600 {path}`"
        )
    try:
        return Identity.from_private_bytes(path.read_bytes())
    except IdentityError as e:
        raise OperatorKeyError(f"{path}: {e}") from None


def save_operators(data_dir: Path, publics: Iterable[bytes]) -> None:
    """Add ``publics`` to the data dir's trusted operators (kept across restarts)."""
    path = data_dir / OPERATORS_FILE_NAME
    held = _read_operators(path)
    new = [p for p in publics if p not in held]
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.writelines(encode_public(p) + "\n" for p in new)
        for p in new:  # a token is a secret, not a signed statement: say whom we trust now
            log.warning("trusting operator key %s (from the join token)", encode_public(p))


def _read_operators(path: Path) -> list[bytes]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(decode_public(line))
    return out


def trusted_operators(data_dir: Path, configured: Iterable[str] = ()) -> frozenset[bytes]:
    """Every operator public key this agent obeys (above); OperatorKeyError
    for a malformed one."""
    keys = {decode_public(k) for k in configured}
    keys.update(_read_operators(data_dir / OPERATORS_FILE_NAME))
    own = data_dir / OPERATOR_KEY_FILE_NAME
    if own.exists():
        keys.add(load_operator_key(own).public_key)
    return frozenset(keys)
