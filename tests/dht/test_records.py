from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hexamesh.dht.records import (
    MAX_VALUE,
    Record,
    RecordStore,
    StoreConfig,
    StoreRefused,
    renewed,
    sign_record,
)
from hexamesh.identity import Identity

ALICE = Identity.from_private_bytes(bytes([1]) * 32)
BOB = Identity.from_private_bytes(bytes([2]) * 32)
NOW = 1_000_000.0


def rec(
    who: Identity = ALICE,
    key: str = "cell:0,1",
    value: bytes = b"v",
    seq: int = 1,
    ttl: float = 60.0,
) -> Record:
    return sign_record(who, key, value, seq, NOW + ttl)


def test_a_valid_record_is_stored_and_read_back() -> None:
    store = RecordStore()
    r = rec()
    assert store.put(r, NOW) is True
    assert store.get("cell:0,1", NOW) == [r]
    assert store.put(r, NOW) is False  # exact duplicate
    assert r.publisher_id == ALICE.node_id


@settings(max_examples=300)
@given(
    st.sampled_from(["key", "value", "seq", "expires", "publisher", "signature"]),
    st.data(),
)
def test_a_forged_record_is_never_accepted(field: str, data: st.DataObject) -> None:
    r = rec()
    changes: dict[str, Any] = {
        "key": data.draw(st.sampled_from(["cell:0,2", "cell:1,1", "job:x"])),
        "value": data.draw(st.binary(max_size=20).filter(lambda v: v != b"v")),
        "seq": data.draw(st.integers(2, 2**62)),
        "expires": data.draw(st.floats(NOW + 1, NOW + 3000).filter(lambda e: e != r.expires)),
        "publisher": BOB.public_key,
        "signature": data.draw(st.binary(min_size=64, max_size=64)),
    }
    forged = replace(r, **{field: changes[field]})
    with pytest.raises(StoreRefused, match="bad signature"):
        RecordStore().put(forged, NOW)


@settings(max_examples=100)
@given(st.integers(1, 50), st.integers(1, 50))
def test_a_replayed_older_record_never_replaces_a_newer_one(old_seq: int, new_seq: int) -> None:
    store = RecordStore()
    old, new = (
        rec(seq=min(old_seq, new_seq), value=b"old"),
        rec(seq=max(old_seq, new_seq) + 1, value=b"new"),
    )
    store.put(old, NOW)
    store.put(new, NOW)
    with pytest.raises(StoreRefused, match="stale"):
        store.put(old, NOW)
    assert store.get("cell:0,1", NOW) == [new]


def test_single_owner_keys_are_put_if_absent_until_expiry() -> None:
    store = RecordStore()
    store.put(rec(ALICE, ttl=10), NOW)
    with pytest.raises(StoreRefused, match="is held by"):
        store.put(rec(BOB, ttl=10), NOW)
    # The owner renews its lease: same seq and value, later expiry.
    store.put(renewed(rec(ALICE, ttl=10), ALICE, NOW + 20), NOW + 5)
    with pytest.raises(StoreRefused, match="is held by"):
        store.put(rec(BOB, ttl=30), NOW + 15)
    # Once the lease runs out, anyone may claim it.
    later = sign_record(BOB, "cell:0,1", b"b", 1, NOW + 60)
    assert store.put(later, NOW + 21) is True
    assert [r.publisher_id for r in store.get("cell:0,1", NOW + 21)] == [BOB.node_id]


def test_same_seq_with_another_value_is_refused() -> None:
    store = RecordStore()
    store.put(rec(value=b"a", ttl=10), NOW)
    with pytest.raises(StoreRefused, match="different value"):
        store.put(rec(value=b"b", ttl=20), NOW)


def test_set_keys_hold_one_entry_per_publisher_up_to_a_limit() -> None:
    store = RecordStore(StoreConfig(max_entries_per_set=2))
    carol = Identity.from_private_bytes(bytes([3]) * 32)
    store.put(rec(ALICE, key="model:m"), NOW)
    store.put(rec(BOB, key="model:m"), NOW)
    store.put(rec(ALICE, key="model:m", seq=2, value=b"v2"), NOW)
    assert sorted(r.value for r in store.get("model:m", NOW)) == [b"v", b"v2"]
    with pytest.raises(StoreRefused, match="holds 2 entries"):
        store.put(rec(carol, key="model:m"), NOW)


def test_records_vanish_at_expiry() -> None:
    store = RecordStore()
    store.put(rec(ttl=10), NOW)
    assert store.get("cell:0,1", NOW + 9.9) != []
    assert store.get("cell:0,1", NOW + 10) == []
    assert len(store) == 0
    with pytest.raises(StoreRefused, match="expired"):
        store.put(rec(ttl=10), NOW + 10)


@pytest.mark.parametrize(
    ("record", "config", "error"),
    [
        (rec(key="bogus:1"), StoreConfig(), "unknown key type"),
        (rec(key="nocolon"), StoreConfig(), "unknown key type"),
        (rec(ttl=10 * 24 * 3600), StoreConfig(), "ahead"),
        (rec(value=bytes(MAX_VALUE)), StoreConfig(max_bytes_per_publisher=1000), "quota"),
    ],
)
def test_refusals_say_why(record: Record, config: StoreConfig, error: str) -> None:
    with pytest.raises(StoreRefused, match=error):
        RecordStore(config).put(record, NOW)


def test_storage_full_is_a_clear_refusal_and_expired_space_is_reused() -> None:
    store = RecordStore(StoreConfig(max_records=2))
    store.put(rec(key="job:1", ttl=5), NOW)
    store.put(rec(key="job:2", ttl=60), NOW)
    with pytest.raises(StoreRefused, match="storage full"):
        store.put(rec(key="job:3"), NOW)
    assert store.put(rec(key="job:3"), NOW + 6) is True  # job:1 expired, its slot is free
    assert len(store) == 2


def test_publisher_bytes_are_accounted_and_released() -> None:
    store = RecordStore()
    store.put(rec(key="job:1", value=bytes(100)), NOW)
    used = store.bytes_of(ALICE.node_id)
    assert used > 100
    store.expire(NOW + 61)
    assert store.bytes_of(ALICE.node_id) == 0


def test_the_store_is_bounded_in_bytes_whatever_the_publishers() -> None:
    """Throwaway publishers each within their quota could fill 80 MiB before."""
    store = RecordStore(StoreConfig(max_bytes=100_000))
    now = 1000.0
    stored = 0
    for i in range(100):
        record = sign_record(Identity.generate(), f"job:x{i}", bytes(8000), seq=1, expires=now + 60)
        try:
            store.put(record, now)
            stored += 1
        except StoreRefused as e:
            assert "full" in str(e)
    assert store.total_bytes <= 100_000 and stored == 100_000 // record.size
    assert len(store) == stored


def test_one_publisher_holds_only_so_many_cells_and_slots_here() -> None:
    store = RecordStore(StoreConfig(max_cells=2, max_slots=3))
    greedy = Identity.generate()
    for q in range(2):
        assert store.put(sign_record(greedy, f"cell:{q},0", b"v", 1, NOW + 500.0), NOW)
    with pytest.raises(StoreRefused, match="2 cell: keys"):
        store.put(sign_record(greedy, "cell:9,0", b"v", 1, NOW + 500.0), NOW)
    for s in range(3):
        store.put(sign_record(greedy, f"placement:m/1/{s}", b"v", 1, NOW + 500.0), NOW)
    with pytest.raises(StoreRefused, match="3 placement: keys"):
        store.put(sign_record(greedy, "placement:m/1/9", b"v", 1, NOW + 500.0), NOW)
    # renewing a held claim is no new claim; another publisher has its own quota
    assert store.put(sign_record(greedy, "cell:0,0", b"v", 2, NOW + 500.0), NOW)
    assert store.put(sign_record(Identity.generate(), "cell:9,0", b"v", 1, NOW + 500.0), NOW)
    # a claim that expires frees its place
    store.put(sign_record(greedy, "cell:1,0", b"v", 2, NOW + 1.0), NOW)
    store.expire(NOW + 2.0)
    assert store.put(sign_record(greedy, "cell:8,0", b"v", 1, NOW + 500.0), NOW + 2.0)


def test_a_holder_says_how_long_it_has_held_a_record_across_renewals() -> None:
    store = RecordStore()
    who = Identity.generate()
    assert store.held_for("cell:0,0", who.node_id, NOW) == 0.0
    store.put(sign_record(who, "cell:0,0", b"v", 1, NOW + 100.0), NOW)
    store.put(sign_record(who, "cell:0,0", b"v", 2, NOW + 200.0), NOW + 60.0)  # a renewal
    assert store.held_for("cell:0,0", who.node_id, NOW + 90.0) == 90.0
    store.expire(NOW + 300.0)
    store.put(sign_record(who, "cell:0,0", b"v", 3, NOW + 400.0), NOW + 300.0)
    assert store.held_for("cell:0,0", who.node_id, NOW + 310.0) == 10.0  # seen anew
