"""Swarm key rotation in a running agent: the admin call, the hand-over of the
new key over peer channels, and the steps on time (``hexamesh.rotation``).

``POST /v1/swarm/rotate`` (an admin key) with ``{"use_after": s,
"retire_after": s}`` makes a new key and a rotation signed with the operator
key this agent keeps, or takes ``{"key": base64url, "rotation": {...}}``
made elsewhere (``hexamesh swarm rotate --operator-key``). The agent
installs the key and sends it to every live member it holds that is not
revoked, each over its own peer channel (``POST /swarm/key``, peers only);
a member that takes a new rotation passes it on to its comb links, once.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import trio

from hexamesh import b64url
from hexamesh.comb.service import Honeycomb
from hexamesh.comb.swim import MemberState
from hexamesh.identity import Identity, short_id
from hexamesh.net.base import Addr
from hexamesh.rotation import RETIRE_AFTER, USE_AFTER, Rotation, RotationError, Rotations
from hexamesh.rotation import sign_rotation as _sign
from hexamesh.serve.frontdoor import FrontDoor
from hexamesh.serve.http import HttpConnection, Request
from hexamesh.serve.peerroute import route_headers
from hexamesh.serve.relay import Peer, UpstreamError, open_upstream, read_body, request_bytes
from hexamesh.serve.requests import ApiError, parse_json_body
from hexamesh.wire import KEY_BYTES

__all__ = ["KeyRotation", "handoff_body"]

log = logging.getLogger(__name__)

HANDOFF_TIMEOUT = 10.0  # s for one member to take the key over its channel
HANDOFFS_AT_ONCE = 16  # channels opened at once to hand the key over
MIN_USE_AFTER = 1.0  # s; the shortest the API allows (tests; the default is USE_AFTER)


def handoff_body(key: bytes, rotation: Rotation) -> dict[str, Any]:
    return {"key": b64url.encode(key), "rotation": rotation.to_json()}


def _key_of(text: object) -> bytes:
    key = b64url.decode(text)
    if len(key) != KEY_BYTES:
        raise ValueError(f"a swarm key has {KEY_BYTES} bytes")
    return key


class KeyRotation:
    def __init__(
        self,
        rotations: Rotations,
        front: FrontDoor,
        honeycomb: Honeycomb,
        *,
        revoked: Callable[[bytes], bool],
        operator: Identity | None,
        clock: Callable[[], float],
    ) -> None:
        self.rotations = rotations
        self.front = front
        self.honeycomb = honeycomb
        self.revoked = revoked
        self.operator = operator
        self._clock = clock
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.handed_over = 0  # members that took a key from us
        self.handoffs_failed = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply the steps of the rotation under way when they are due."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                self.rotations.step()
                due = self.rotations.next_at()
                wait = math.inf if due is None else max(0.0, due - self._clock()) + 0.05
                self._changed = trio.Event()
                with trio.move_on_after(wait):
                    await self._changed.wait()

    async def handle(self, request: Request, conn: HttpConnection) -> bool:
        path = request.path.rstrip("/")
        if path == "/v1/swarm/rotate" and request.method == "POST":
            doc = self.rotate(parse_json_body(request.body))
        elif path == "/swarm/key" and request.method == "POST":
            doc = self.take(parse_json_body(request.body), spread=self._links())
        else:
            return False
        await conn.respond(200, json.dumps(doc).encode(), keep_alive=request.keep_alive)
        return True

    def rotate(self, body: dict[str, Any]) -> dict[str, Any]:
        """The admin call: a new key for the whole swarm, from here."""
        if "rotation" in body:
            return self.take(body, spread=self._members())
        if self.operator is None:
            raise ApiError(
                403,
                "this agent holds no operator key to sign the rotation: send a signed one "
                "(`hexamesh swarm rotate --operator-key`)",
                type="permission_error",
                code="no_operator_key",
            )
        use_after, retire_after = body.get("use_after", USE_AFTER), body.get("retire_after")
        retire_after = RETIRE_AFTER if retire_after is None else retire_after
        for name, value in (("use_after", use_after), ("retire_after", retire_after)):
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ApiError(400, f"`{name}` is seconds", param=name)
        if not MIN_USE_AFTER <= use_after < retire_after:
            raise ApiError(
                400,
                f"`use_after` must be at least {MIN_USE_AFTER:g} s and below `retire_after`",
                param="use_after",
            )
        key = secrets.token_bytes(KEY_BYTES)
        rotation = _sign(
            self.operator, key, now=self._clock(), use_after=use_after, retire_after=retire_after
        )
        return self.take(handoff_body(key, rotation), spread=self._members())

    def take(self, body: dict[str, Any], *, spread: list[tuple[bytes, Addr]]) -> dict[str, Any]:
        """Install the key of a rotation (a peer's or ours), and hand it on to
        ``spread`` if it is new to us."""
        try:
            key = _key_of(body.get("key"))
            rotation = Rotation.from_json(body.get("rotation"))
            new = self.rotations.take(key, rotation)
        except (ValueError, RotationError) as e:
            raise ApiError(403, f"rotation refused: {e}", type="permission_error") from None
        if new:
            self._changed.set()
            assert self._nursery is not None, "run() first"
            self._nursery.start_soon(self._hand_over, handoff_body(key, rotation), spread)
        return {
            "object": "rotation",
            "new": new,
            "use_at": rotation.use_at,
            "retire_at": rotation.retire_at,
            "told": len(spread) if new else 0,
        }

    def _members(self) -> list[tuple[bytes, Addr]]:
        """Every live member held that is not revoked, and where it is."""
        live = (n for n, s in self.honeycomb.members().items() if s is not MemberState.DEAD)
        return self._reachable(live)

    def _links(self) -> list[tuple[bytes, Addr]]:
        return self._reachable(self.honeycomb.neighbours())

    def _reachable(self, nodes: Iterable[bytes]) -> list[tuple[bytes, Addr]]:
        """Of ``nodes``, those not revoked whose address we hold, with it."""
        out = []
        for node in nodes:
            addr = self.honeycomb.address_of(node)
            if addr is not None and not self.revoked(node):
                out.append((node, addr))
        return out

    async def _hand_over(self, body: dict[str, Any], to: list[tuple[bytes, Addr]]) -> None:
        data = json.dumps(body).encode()
        limit = trio.CapacityLimiter(HANDOFFS_AT_ONCE)
        async with trio.open_nursery() as nursery:
            for node, addr in to:
                nursery.start_soon(self._hand_to, node, addr, data, limit)

    async def _hand_to(
        self, node: bytes, addr: Addr, data: bytes, limit: trio.CapacityLimiter
    ) -> None:
        async with limit:
            headers = route_headers(self.front.view.node, None)
            request = request_bytes("POST", *addr, "/swarm/key", data, headers)
            try:
                with trio.fail_after(HANDOFF_TIMEOUT):
                    up = await open_upstream(*addr, request, peer=Peer(node, self.front.keys))
                    try:
                        await read_body(up)
                    finally:
                        await up.aclose()
            except (UpstreamError, OSError, trio.TooSlowError, trio.BrokenResourceError) as e:
                self.handoffs_failed += 1
                log.info("could not hand the new swarm key to %s: %s", short_id(node), e)
                return
            if up.status == 200:
                self.handed_over += 1
            else:
                self.handoffs_failed += 1
                log.info("%s refused the new swarm key (%d)", short_id(node), up.status)
