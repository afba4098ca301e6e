"""Swarm key rotation, in three steps, so that no member stops hearing another.

An operator's rotation (``hexamesh swarm rotate``) is a new random swarm key
and a signed :class:`Rotation` about it: the key's hash, when it becomes the
key that seals (``use_at``), and when every other key is dropped
(``retire_at``). The key travels to every live member that is not revoked
over the encrypted peer channel, never in a datagram sealed under the old
key (a revoked node still holds that one), and each member passes it on
to its comb links once (``hexamesh.agent.rotate``). Each member, as Serf's
``keyring`` install / use / remove:

1. installs it at once, as a key it opens with (its ring: old primary, new);
2. seals with it from ``use_at``: by then every member holds it, so no
   frame sealed under it goes to a member that cannot open it;
3. drops every other key at ``retire_at``: a node that never got the new
   key (revoked, or away all that time) hears nothing from then on, and
   needs a new join token.

Times are Unix seconds (members' clocks agree within ``MAX_CLOCK_SKEW``, or
their frames are refused anyway; ``use_after`` is well above the time the
key takes to spread). The ring and the pending rotation are kept in the data
dir, so a restart between the steps finishes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgpack

from hexamesh.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify
from hexamesh.swarmkey import replace_key_file
from hexamesh.wire import KEY_BYTES, KeyRing, Len, Struct, struct

__all__ = [
    "RETIRE_AFTER",
    "ROTATION_FILE_NAME",
    "USE_AFTER",
    "Rotation",
    "RotationError",
    "Rotations",
    "sign_rotation",
]

log = logging.getLogger(__name__)

USE_AFTER = 10.0  # s from the call until members seal with the new key
RETIRE_AFTER = 600.0  # s from the call until the old keys are dropped
ROTATION_FILE_NAME = "rotation.json"  # in the data dir: the rotation under way
_CONTEXT = b"hexamesh rotation v1"


class RotationError(ValueError):
    """A rotation that does not give the authority it claims."""


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class Rotation(Struct):
    key_hash: Annotated[bytes, Len(32)]  # BLAKE2b-256 of the new key
    issued: int  # Unix seconds
    use_at: int  # members seal with the new key from then
    retire_at: int  # and drop every other key then
    operator: Annotated[bytes, Len(PUBLIC_KEY_BYTES)]
    signature: Annotated[bytes, Len(SIGNATURE_BYTES)]

    def signed_bytes(self) -> bytes:
        fields = [self.key_hash, self.issued, self.use_at, self.retire_at, self.operator]
        return _CONTEXT + bytes(msgpack.packb(fields, use_bin_type=True))

    def check(self, key: bytes, operators: frozenset[bytes]) -> None:
        """RotationError unless ``key`` is the one a trusted operator signed for."""
        if len(key) != KEY_BYTES or _hash(key) != self.key_hash:
            raise RotationError("the key is not the one the rotation names")
        if not self.issued <= self.use_at <= self.retire_at < 2**63:
            raise RotationError("the rotation's times are out of order")
        if self.operator not in operators:
            raise RotationError("signed by a key that is not one of our operators")
        if not verify(self.operator, self.signature, self.signed_bytes()):
            raise RotationError("the rotation's signature does not verify")

    def to_json(self) -> dict[str, object]:
        return {
            "key_hash": self.key_hash.hex(),
            "issued": self.issued,
            "use_at": self.use_at,
            "retire_at": self.retire_at,
            "operator": self.operator.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, doc: object) -> Rotation:
        """ValueError for anything that is not one."""
        if not isinstance(doc, dict):
            raise ValueError("a rotation is an object")
        times = [doc.get(k) for k in ("issued", "use_at", "retire_at")]
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in times):
            raise ValueError("a rotation's times are Unix seconds")
        hexes = [doc.get(k) for k in ("key_hash", "operator", "signature")]
        if not all(isinstance(h, str) for h in hexes):
            raise ValueError("a rotation's key_hash, operator and signature are hex")
        return cls(
            key_hash=bytes.fromhex(str(hexes[0])),
            issued=int(times[0]),  # type: ignore[arg-type]
            use_at=int(times[1]),  # type: ignore[arg-type]
            retire_at=int(times[2]),  # type: ignore[arg-type]
            operator=bytes.fromhex(str(hexes[1])),
            signature=bytes.fromhex(str(hexes[2])),
        )


def _hash(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=32).digest()


def sign_rotation(
    operator: Identity,
    key: bytes,
    *,
    now: float,
    use_after: float = USE_AFTER,
    retire_after: float = RETIRE_AFTER,
) -> Rotation:
    issued = int(now)
    unsigned = Rotation(
        key_hash=_hash(key),
        issued=issued,
        use_at=issued + max(1, round(use_after)),
        retire_at=issued + max(round(use_after) + 1, round(retire_after)),
        operator=operator.public_key,
        signature=bytes(SIGNATURE_BYTES),
    )
    return dataclasses.replace(unsigned, signature=operator.sign(unsigned.signed_bytes()))


class Rotations:
    """One agent's side: takes a rotation, keeps it, applies its steps."""

    def __init__(
        self,
        keyring: KeyRing,
        *,
        key_file: Path,
        data_dir: Path,
        operators: frozenset[bytes],
        clock: Callable[[], float],
    ) -> None:
        self.keyring = keyring
        self.key_file = key_file
        self.path = data_dir / ROTATION_FILE_NAME
        self.operators = operators
        self._clock = clock
        self.current: tuple[Rotation, bytes] | None = self._load()

    def take(self, key: bytes, rotation: Rotation) -> bool:
        """Install ``key`` if ``rotation`` is new and holds (RotationError if it
        does not hold); False if we have it already."""
        rotation.check(key, self.operators)
        if self.current is not None and self.current[0] == rotation:
            return False
        if key in self.keyring.keys and self.current is None:
            return False  # done before (its file gone): nothing to install
        self.current = (rotation, key)
        self.keyring.install(key)
        self._keep()
        log.warning(
            "swarm key rotation: the new key is installed; sealing with it in %.0f s, "
            "the old ones dropped in %.0f s",
            rotation.use_at - self._clock(),
            rotation.retire_at - self._clock(),
        )
        self.step()
        return True

    def step(self) -> None:
        """Apply the steps that are due (the caller calls again at ``next_at``)."""
        if self.current is None:
            return
        rotation, key = self.current
        now = self._clock()
        changed = False
        if now >= rotation.use_at and self.keyring.primary != key:
            self.keyring.use(key)
            changed = True
            log.warning("swarm key rotation: sealing with the new key")
        if now >= rotation.retire_at:
            if len(self.keyring.keys) > 1:
                self.keyring.retire_all_but(key)
                changed = True
                log.warning("swarm key rotation: the old keys are dropped")
            self.current = None
            self.path.unlink(missing_ok=True)
        if changed:
            replace_key_file(self.key_file, self.keyring)

    def next_at(self) -> float | None:
        if self.current is None:
            return None
        rotation, key = self.current
        return float(rotation.use_at if self.keyring.primary != key else rotation.retire_at)

    def _keep(self) -> None:
        assert self.current is not None
        rotation, _ = self.current
        replace_key_file(self.key_file, self.keyring)
        self.path.write_text(json.dumps(rotation.to_json()))

    def _load(self) -> tuple[Rotation, bytes] | None:
        """The rotation under way when we stopped, if its key is in our ring."""
        try:
            rotation = Rotation.from_json(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return None
        for key in self.keyring.keys:
            try:
                rotation.check(key, self.operators)
            except RotationError:
                continue
            return rotation, key
        return None
