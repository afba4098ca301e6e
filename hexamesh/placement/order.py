"""A placement order: an operator's word that the swarm may load this model.

A placement vote starts engines on other people's machines, so a ballot
carries an :class:`Order` signed by an operator key (``hexamesh.operator``):
the model's name, the source the winners load, and until when the order
stands. Every node that takes part in the vote (scouts, candidates) checks
the signature against the operators it trusts and that the ballot asks for
what was ordered; a node that holds no order cannot start a vote, and a key
holder cannot make one. An order outlives one vote: swarmscale adds replicas
of a model under the order it was placed by, until it expires.

``expires`` is wall-clock time (Unix seconds): orders last days, and peers'
clocks agree to within ``MAX_CLOCK_SKEW`` or their frames are refused anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgpack

from hexamesh import b64url
from hexamesh.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify
from hexamesh.wire import Len, MaxLen, Struct, struct

__all__ = [
    "ORDER_TTL",
    "Order",
    "OrderError",
    "check_order",
    "order_from_json",
    "order_to_json",
    "sign_order",
]

ORDER_TTL = 30 * 86400.0  # s an order stands unless its operator says otherwise
_CONTEXT = b"hexamesh placement order v1"


class OrderError(ValueError):
    """An order that does not give the authority it claims."""


@struct
@dataclass(frozen=True, slots=True, kw_only=True)
class Order(Struct):
    model: Annotated[str, MaxLen(64)]
    source: Annotated[str, MaxLen(256)]
    expires: int  # Unix seconds
    operator: Annotated[bytes, Len(PUBLIC_KEY_BYTES)]
    signature: Annotated[bytes, Len(SIGNATURE_BYTES)]

    def signed_bytes(self) -> bytes:
        return _signed_bytes(self.model, self.source, self.expires, self.operator)


def _signed_bytes(model: str, source: str, expires: int, operator: bytes) -> bytes:
    body: bytes = msgpack.packb([model, source, expires, operator], use_bin_type=True)
    return _CONTEXT + body


def sign_order(
    operator: Identity, model: str, source: str, *, now: float, ttl: float = ORDER_TTL
) -> Order:
    expires = int(now + ttl)
    sig = operator.sign(_signed_bytes(model, source, expires, operator.public_key))
    return Order(
        model=model, source=source, expires=expires, operator=operator.public_key, signature=sig
    )


def check_order(
    order: Order, *, operators: frozenset[bytes], now: float, model: str, source: str
) -> None:
    """OrderError unless ``order`` is a standing order of a trusted operator
    for ``model`` from ``source``."""
    if order.operator not in operators:
        raise OrderError("signed by a key that is not one of our operators")
    if order.model != model or order.source != source:
        raise OrderError(
            f"the order is for {order.model} from {order.source!r}, not {model} from {source!r}"
        )
    if order.expires < now:
        raise OrderError(f"the order expired {now - order.expires:.0f} s ago")
    if not verify(order.operator, order.signature, order.signed_bytes()):
        raise OrderError("the order's signature does not verify")


def order_to_json(order: Order) -> dict[str, object]:
    """An order as the API shows it (keys and signature in base64url)."""
    return {
        "model": order.model,
        "source": order.source,
        "expires": order.expires,
        "operator": b64url.encode(order.operator),
        "signature": b64url.encode(order.signature),
    }


def order_from_json(doc: object) -> Order:
    """Inverse of ``order_to_json``; ValueError for anything else."""
    if not isinstance(doc, dict):
        raise ValueError("an order is an object")
    model, source, expires = doc.get("model"), doc.get("source"), doc.get("expires")
    if not isinstance(model, str) or not isinstance(source, str):
        raise ValueError("an order names a model and a source")
    if not isinstance(expires, int) or isinstance(expires, bool) or not 0 <= expires < 2**63:
        raise ValueError("an order's `expires` is Unix seconds")
    return Order(
        model=model,
        source=source,
        expires=expires,
        operator=b64url.decode(doc.get("operator")),
        signature=b64url.decode(doc.get("signature")),
    )
