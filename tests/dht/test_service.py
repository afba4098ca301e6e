"""The trio-facing DHT on real UDP sockets: 20 nodes in one process."""

from contextlib import AsyncExitStack
from pathlib import Path

import trio

from hexamesh.dht.contact import Contact
from hexamesh.dht.service import Dht, load_contacts, open_dht_node, save_contacts
from hexamesh.identity import Identity
from hexamesh.wire import KeyRing

RING = KeyRing(bytes(range(32)))


async def start_nodes(stack: AsyncExitStack, n: int) -> list[Dht]:
    nodes = [
        await stack.enter_async_context(open_dht_node(RING, host="127.0.0.1")) for _ in range(n)
    ]
    seed = nodes[0].core.me.addr
    for node in nodes[1:]:
        assert await node.bootstrap([seed])
    return nodes


async def test_twenty_nodes_store_on_one_read_on_another() -> None:
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            nodes = await start_nodes(stack, 20)
            assert await nodes[3].put("job:abc", b"result", 300) >= 15
            [record] = await nodes[17].get("job:abc")
            assert record.value == b"result"
            assert record.publisher_id == nodes[3].core.identity.node_id
            for i in (5, 9):
                await nodes[i].announce("tiny", f"n{i}".encode(), 300)
            providers = await nodes[12].providers("tiny")
            assert sorted(p.value for p in providers) == [b"n5", b"n9"]
            assert await nodes[0].get("job:missing") == []
            closest = nodes[8].closest(nodes[2].core.me.id, 3)
            assert closest[0].id == nodes[2].core.me.id


async def test_a_restarted_node_rejoins_from_saved_contacts_without_a_seed(tmp_path: Path) -> None:
    path = tmp_path / "contacts.json"
    me = Identity.generate()
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            nodes = await start_nodes(stack, 6)
            async with open_dht_node(RING, identity=me, host="127.0.0.1") as first:
                await first.bootstrap([nodes[0].core.me.addr])
                save_contacts(path, first.closest(me.node_id, 200))
            await nodes[2].put("job:later", b"x", 300)
            saved = load_contacts(path)
            assert len(saved) == 6
            async with open_dht_node(RING, identity=me, host="127.0.0.1") as again:
                assert await again.bootstrap([], known=saved)
                [record] = await again.get("job:later")
                assert record.value == b"x"


def test_contacts_file_round_trip_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    contacts = [Contact(id=bytes([i]) * 20, host="10.0.0.1", port=7000 + i) for i in range(3)]
    save_contacts(path, contacts)
    assert load_contacts(path) == contacts
    path.write_text('[{"id": "00", "host": "h", "port": 1}]')  # id too short
    assert load_contacts(path) == []
    path.write_text("not json")
    assert load_contacts(path) == []
    assert load_contacts(tmp_path / "missing.json") == []
