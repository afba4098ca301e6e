"""Who holds a claimed key (a cell, a placement slot): the rule every reader applies."""

from hexamesh.dht.claim import SIGHT_TOLERANCE, Holder, addr_value, holder_of
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


def test_a_claim_is_as_old_as_its_holders_first_saw_it() -> None:
    """``seq = 0`` no longer takes a key: the claim counts as made when its
    holders first saw it; sights within the tolerance are a race, settled as before."""
    honest, liar = Identity.generate(), Identity.generate()
    held = claim(honest, 1_000_000, addr_value(("10.0.0.1", 7420)))  # at t = 1000 s, seen then
    back_dated = claim(liar, 0, addr_value(("10.6.6.6", 1)))  # says 1970; seen at t = 1300 s
    seen = {honest.node_id: 1000.0, liar.node_id: 1300.0}
    assert holder_of([held, back_dated]).node == liar.node_id  # type: ignore[union-attr]
    assert holder_of([held, back_dated], seen).node == honest.node_id  # type: ignore[union-attr]
    assert holder_of([back_dated, held], seen).node == honest.node_id  # type: ignore[union-attr]
    race = {honest.node_id: 1000.0, liar.node_id: 1000.0 + SIGHT_TOLERANCE / 2}
    assert holder_of([held, back_dated], race).node == liar.node_id  # type: ignore[union-attr]
