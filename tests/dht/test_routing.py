import random

from hypothesis import given, settings
from hypothesis import strategies as st

from hexamesh.dht.contact import Contact
from hexamesh.dht.routing import RoutingTable

ME = Contact(id=bytes(20), host="10.0.0.0", port=1)


def contact(n: int, port: int = 1) -> Contact:
    return Contact(id=n.to_bytes(20, "big"), host=f"10.0.{n % 250}.{n % 7}", port=port)


@settings(max_examples=200)
@given(
    st.lists(st.integers(1, 2**160 - 1), max_size=300, unique=True),
    st.integers(0, 2**160 - 1),
    st.integers(1, 30),
)
def test_closest_is_exactly_the_n_nearest_by_xor(ids: list[int], target: int, n: int) -> None:
    table = RoutingTable(ME, k=20, now=0.0)
    for i in ids:
        table.add(contact(i), 0.0)
    held = [c.long_id for c in table]
    got = [c.long_id for c in table.closest(target.to_bytes(20, "big"), n)]
    assert got == sorted(held, key=lambda i: i ^ target)[:n]


def far_id(i: int) -> int:
    """Ids in the far half whose shared prefix is exactly 5 bits (10000), so their
    bucket neither holds our id nor passes §4.2's depth % 5 != 0 split rule."""
    return ((0b100000 | (i % 2)) << 154) + i


def test_a_full_far_bucket_names_its_least_recently_seen_contact() -> None:
    table = RoutingTable(ME, k=3, now=0.0)
    far = [contact(far_id(i)) for i in range(5)]
    for c in far[:3]:
        assert table.add(c, 1.0) is None
    # Their bucket does not hold our id and its depth is 5: it cannot split,
    # so it names its head.
    assert table.add(far[3], 2.0) == far[0]
    assert far[3].id not in table
    # The head answered: it is touched, moves to the tail; next time far[1] is oldest.
    assert table.add(far[0], 3.0) is None
    assert table.add(far[4], 4.0) == far[1]


def test_remove_promotes_the_freshest_replacement() -> None:
    table = RoutingTable(ME, k=2, now=0.0)
    a, b, c = (contact(far_id(i)) for i in range(3))
    table.add(a, 0.0)
    table.add(b, 0.0)
    assert table.add(c, 0.0) == a
    assert table.remove(a.id) == c
    assert c.id in table and a.id not in table and len(table) == 2


def test_buckets_near_us_split_and_hold_more() -> None:
    table = RoutingTable(ME, k=2, now=0.0)
    for i in range(1, 200):
        table.add(contact(i), 0.0)  # all share a long prefix with ME (id 0)
    assert len(table.buckets) > 1
    assert len(table) > 2


def test_bucket_clock_is_injected_and_refresh_finds_stale_buckets() -> None:
    table = RoutingTable(ME, k=20, now=100.0)
    table.add(contact(5), 150.0)
    assert table.buckets[0].last_updated == 150.0
    assert table.stale_buckets(3600.0 + 149.0, 3600.0) == []
    assert table.stale_buckets(3600.0 + 150.0, 3600.0) == [table.buckets[0].range]


def test_new_address_for_a_known_id_replaces_the_old() -> None:
    table = RoutingTable(ME, k=20, now=0.0)
    table.add(contact(7, port=1), 0.0)
    table.add(contact(7, port=2), 1.0)
    got = table.get((7).to_bytes(20, "big"))
    assert got is not None and got.port == 2 and len(table) == 1


def test_never_holds_itself() -> None:
    table = RoutingTable(ME, k=20, now=0.0)
    assert table.add(ME, 0.0) is None
    assert len(table) == 0
    rnd = random.Random(1)
    for _ in range(50):
        table.add(contact(rnd.getrandbits(160) or 1), 0.0)
    assert ME.id not in table
