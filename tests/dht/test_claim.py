"""Who holds a claimed key (a cell, a placement slot): the rule every reader applies."""

from hexamesh.dht.claim import Holder, addr_value, holder_of
from hexamesh.dht.records import Record, sign_record
from hexamesh.identity import Identity

KEY = "cell:1,0"


def claim(who: Identity, seq: int, value: bytes | None = None) -> Record:
    value = addr_value(("10.0.0.9", seq)) if value is None else value
    return sign_record(who, KEY, value, seq=seq, expires=2e9)


def test_duplicate_claims_settle_the_same_way_on_both_sides() -> None:
    low, high = sorted((Identity.generate() for _ in range(2)), key=lambda i: i.node_id)
    older, newer, tie = claim(high, 10), claim(low, 12), claim(low, 10)
    assert (
        holder_of([older, newer])
        == holder_of([newer, older])
        == Holder(node=high.node_id, addr=("10.0.0.9", 10), since=10)
    )  # older wins
    assert (
        holder_of([older, tie])
        == holder_of([tie, older])
        == Holder(node=low.node_id, addr=("10.0.0.9", 10), since=10)
    )  # tie: lower node id


def test_malformed_values_hold_nothing() -> None:
    a, b = Identity.generate(), Identity.generate()
    bad = claim(b, 1, b"not msgpack")
    assert holder_of([claim(b, 200), claim(a, 100), bad]) == Holder(
        node=a.node_id, addr=("10.0.0.9", 100), since=100
    )
    assert holder_of([bad]) is None and holder_of([]) is None
