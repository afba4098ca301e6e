"""Admin calls about the swarm itself, on the API port (an admin key only).

``POST /v1/swarm/revocations`` with ``{"node": "<node id, hex>"}`` revokes a
node: the agent signs the revocation with the operator key it keeps, or the
body brings one signed elsewhere (``"revocation": {"node", "issued",
"operator", "signature"}``, hex; ``hexamesh swarm revoke --operator-key``).
Either way every agent checks the signature against the operators it trusts
(``hexamesh.revocation``); this one enforces it at once and spreads it.
``GET /v1/swarm/revocations`` lists the revocations this agent holds.

``POST /v1/swarm/invites`` with ``{"uses": n, "expires_in": s}`` opens an
invite with this agent as its sponsor (``hexamesh.invites``) and answers its
token.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hexamesh.identity import NODE_ID_BYTES, Identity
from hexamesh.invites import InviteBook, InviteError, InviteToken
from hexamesh.net.base import Addr
from hexamesh.net.driver import CoreDriver
from hexamesh.revocation import Revocation, Revocations, sign_revocation
from hexamesh.serve.http import HttpConnection, Request
from hexamesh.serve.requests import ApiError, parse_json_body

__all__ = ["SwarmAdmin"]

INVITE_TTL = 3600.0  # s an invite stands unless asked otherwise
MAX_INVITE_TTL = 7 * 86400.0  # s; the longest an invite may stand
MAX_USES = 100  # nodes one invite may admit at most


class SwarmAdmin:
    def __init__(
        self,
        revocations: Revocations,
        driver: CoreDriver,
        *,
        operator: Identity | None,
        clock: Callable[[], float],
        invites: InviteBook | None = None,
        sponsor: Callable[[], tuple[Addr, bytes]] | None = None,
    ) -> None:
        """``invites``: this agent's open invites; ``sponsor()``: our peer
        address and node id, as a token names them."""
        self.revocations = revocations
        self.driver = driver
        self.operator = operator
        self._clock = clock
        self.invites = invites
        self._sponsor = sponsor

    async def handle(self, request: Request, conn: HttpConnection) -> bool:
        path = request.path.rstrip("/")
        if path == "/v1/swarm/invites" and request.method == "POST":
            made = self.invite(parse_json_body(request.body))
            await conn.respond(200, json.dumps(made).encode(), keep_alive=request.keep_alive)
            return True
        if path != "/v1/swarm/revocations":
            return False
        if request.method == "GET":
            data = [r.to_json() for r in self.revocations.held.values()]
            doc: dict[str, Any] = {"object": "list", "data": data}
        elif request.method == "POST":
            doc = self.revoke(parse_json_body(request.body))
        else:
            raise ApiError(405, "/v1/swarm/revocations takes GET or POST")
        await conn.respond(200, json.dumps(doc).encode(), keep_alive=request.keep_alive)
        return True

    def invite(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.invites is None or self._sponsor is None:
            raise ApiError(404, "this agent sponsors no invites", code="not_found")
        uses, expires_in = body.get("uses", 1), body.get("expires_in", INVITE_TTL)
        if not isinstance(uses, int) or isinstance(uses, bool) or not 1 <= uses <= MAX_USES:
            raise ApiError(400, f"`uses` must be 1-{MAX_USES}", param="uses")
        if (
            not isinstance(expires_in, int | float)
            or isinstance(expires_in, bool)
            or not 1 <= expires_in <= MAX_INVITE_TTL
        ):
            raise ApiError(
                400, f"`expires_in` must be 1-{MAX_INVITE_TTL:.0f} seconds", param="expires_in"
            )
        try:
            secret, expires = self.invites.create(
                uses=uses, expires_in=float(expires_in), now=self._clock()
            )
        except InviteError as e:
            raise ApiError(429, str(e), type="rate_limit_error", code="too_many_invites") from None
        (host, port), node = self._sponsor()
        token = InviteToken(host, port, node, secret, expires).encode()
        return {"object": "invite", "token": token, "uses": uses, "expires": expires}

    def revoke(self, body: dict[str, Any]) -> dict[str, Any]:
        now = self._clock()
        if "revocation" in body:
            try:
                revocation = Revocation.from_json(body["revocation"])
            except ValueError as e:
                raise ApiError(400, f"`revocation`: {e}", param="revocation") from None
        else:
            node = body.get("node")
            try:
                raw = bytes.fromhex(node) if isinstance(node, str) else b""
            except ValueError:
                raw = b""
            if len(raw) != NODE_ID_BYTES:
                raise ApiError(400, "`node` must be a node id: 40 hex digits", param="node")
            if self.operator is None:
                raise ApiError(
                    403,
                    "this agent holds no operator key to sign the revocation: send a signed "
                    "`revocation` (`hexamesh swarm revoke --operator-key`)",
                    type="permission_error",
                    code="no_operator_key",
                )
            revocation = sign_revocation(self.operator, raw, now=now)
        if revocation.node in self.revocations:
            return {"object": "revocation", "new": False, **revocation.to_json()}
        if revocation.node == self.revocations.me:
            raise ApiError(409, "an agent does not revoke itself: ask another", code="self")
        if not self.revocations.revoke(revocation, now):
            raise ApiError(
                403,
                "refused: not signed by an operator this agent trusts (or it holds "
                "MAX_REVOCATIONS already)",
                type="permission_error",
                param="revocation",
            )
        self.driver.poke()
        return {"object": "revocation", "new": True, **revocation.to_json()}
