"""Invites: a token that admits a few nodes through one sponsor, for a while,
without carrying the swarm key.

``hexamesh swarm invite`` asks an agent (the sponsor, an admin call) for an
invite: a random secret, a use count and an expiry, kept in the sponsor's
data dir. The token (``hxi1.``) names the sponsor's peer address and node id
and carries the secret, not the swarm key. The joiner dials the sponsor's
peer port with the peer channel's own handshake (Noise XXpsk0), the invite's
secret in place of the swarm key as the pre-shared key, and the sponsor's
node id pinned: only a holder of the secret gets through message 1, and only
the sponsor can answer. Inside, the sponsor sends the swarm key ring and the
operators' public keys, counts the use, and closes; the joiner saves them and
joins through the sponsor as with any seed.

A token used up or expired gets nothing (the handshake fails at message 1,
as for a stranger). Leaked, an invite admits at most its uses before its
expiry; the key ring it hands out changes at the next rotation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

import msgpack
import trio

from hexamesh import b64url
from hexamesh.fileio import private_file
from hexamesh.identity import NODE_ID_BYTES, Identity
from hexamesh.limits import MAX_INVITES
from hexamesh.net.channel import ChannelKeys, dial
from hexamesh.net.noise import ChannelError
from hexamesh.wire import KEY_BYTES, KeyRing

__all__ = [
    "INVITES_FILE_NAME",
    "INVITE_PREFIX",
    "InviteBook",
    "InviteError",
    "InviteToken",
    "redeem",
]

log = logging.getLogger(__name__)

INVITE_PREFIX = "hxi1."
INVITES_FILE_NAME = "invites.json"  # the sponsor's open invites (their secrets)
REDEEM_TIMEOUT = 10.0  # s for the whole redemption (connect, handshake, answer)
MAX_ANSWER = 64 * 1024  # bytes of the sponsor's answer a joiner reads at most


class InviteError(Exception):
    """An invite that cannot be used (malformed, used up, expired, unreachable)."""


def _unb64(text: str) -> bytes:
    try:
        return b64url.decode(text)
    except ValueError as e:
        raise InviteError(str(e)) from None


@dataclass(frozen=True, slots=True)
class InviteToken:
    host: str
    port: int
    sponsor: bytes  # the sponsor's node id: the handshake pins it
    secret: bytes
    expires: int  # Unix seconds (the sponsor decides; here to say why it failed)

    def encode(self) -> str:
        fields = [self.host, self.port, self.sponsor, self.secret, self.expires]
        return INVITE_PREFIX + b64url.encode(bytes(msgpack.packb(fields)))

    @classmethod
    def decode(cls, token: str) -> InviteToken:
        token = token.strip()
        if not token.startswith(INVITE_PREFIX):
            raise InviteError(f"an invite starts with {INVITE_PREFIX!r}")
        try:
            host, port, sponsor, secret, expires = msgpack.unpackb(
                _unb64(token[len(INVITE_PREFIX) :])
            )
        except InviteError:
            raise
        except Exception:
            raise InviteError("the invite is corrupted") from None
        if (
            not isinstance(host, str)
            or type(port) is not int
            or not 0 < port < 65536
            or not isinstance(sponsor, bytes)
            or len(sponsor) != NODE_ID_BYTES
            or not isinstance(secret, bytes)
            or len(secret) != KEY_BYTES
            or type(expires) is not int
        ):
            raise InviteError("the invite is corrupted")
        return cls(host, port, sponsor, secret, expires)


def _tag(secret: bytes) -> str:
    return hashlib.blake2b(secret, digest_size=16).hexdigest()


class InviteBook:
    """The sponsor's open invites, kept in the data dir (mode 0600)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / INVITES_FILE_NAME
        self._open: dict[str, tuple[bytes, int, float]] = {}  # tag -> (secret, uses, expires)
        try:
            for doc in json.loads(self.path.read_text()):
                secret = bytes.fromhex(doc["secret"])
                self._open[_tag(secret)] = (secret, int(doc["uses"]), float(doc["expires"]))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s: not a list of invites; starting with none", self.path)

    def create(self, *, uses: int, expires_in: float, now: float) -> tuple[bytes, int]:
        """A new invite's secret and expiry; InviteError when too many are open."""
        self._drop_closed(now)
        if len(self._open) >= MAX_INVITES:
            raise InviteError(f"{MAX_INVITES} invites are open already; wait or let them expire")
        secret = secrets.token_bytes(KEY_BYTES)
        expires = int(now + expires_in)
        self._open[_tag(secret)] = (secret, uses, float(expires))
        self._keep()
        return secret, expires

    def secrets(self, now: float) -> tuple[bytes, ...]:
        """The secrets a joiner may dial with now."""
        return tuple(s for s, uses, exp in self._open.values() if uses > 0 and exp > now)

    def use(self, secret: bytes, now: float) -> bool:
        """Count one use of ``secret``; False if it has none left or expired."""
        tag = _tag(secret)
        held = self._open.get(tag)
        if held is None or held[1] <= 0 or held[2] <= now:
            return False
        self._open[tag] = (held[0], held[1] - 1, held[2])
        self._drop_closed(now)
        self._keep()
        return True

    def __len__(self) -> int:
        return len(self._open)

    def _drop_closed(self, now: float) -> None:
        for tag, (_, uses, exp) in list(self._open.items()):
            if uses <= 0 or exp <= now:
                del self._open[tag]

    def _keep(self) -> None:
        private_file(self.path)
        docs = [{"secret": s.hex(), "uses": u, "expires": e} for s, u, e in self._open.values()]
        self.path.write_text(json.dumps(docs))


def admission(ring: KeyRing, operators: frozenset[bytes]) -> bytes:
    """What a sponsor sends a joiner: the key ring (primary first) and the
    operators' public keys."""
    doc = {
        "keys": [b64url.encode(k) for k in ring.keys],
        "operators": [b64url.encode(o) for o in operators],
    }
    return json.dumps(doc).encode()


async def redeem(token: InviteToken, identity: Identity) -> tuple[list[bytes], list[bytes]]:
    """Dial the sponsor with the invite; its key ring and operator keys, or
    InviteError."""
    keys = ChannelKeys(identity, KeyRing(token.secret))
    try:
        with trio.fail_after(REDEEM_TIMEOUT):
            stream = await trio.open_tcp_stream(token.host, token.port)
            try:
                channel = await dial(stream, keys, token.sponsor)
                data = b""
                while len(data) <= MAX_ANSWER:
                    chunk = await channel.receive_some()
                    if not chunk:
                        break
                    data += chunk
            finally:
                await stream.aclose()
    except ChannelError as e:
        raise InviteError(
            f"the sponsor at {token.host}:{token.port} did not take the invite ({e}): "
            "it is used up, expired or withdrawn, or not this sponsor's"
        ) from None
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as e:
        raise InviteError(f"cannot reach the sponsor at {token.host}:{token.port}: {e}") from None
    try:
        doc = json.loads(data)
        ring = [_unb64(k) for k in doc["keys"]]
        operators = [_unb64(o) for o in doc["operators"]]
        KeyRing(ring[0], ring[1:])  # checks the sizes
        if not all(len(o) == 32 for o in operators):
            raise ValueError("an operator key has 32 bytes")
    except (ValueError, KeyError, TypeError, IndexError, InviteError):
        raise InviteError("the sponsor's answer is not a key ring") from None
    return ring, operators
