"""Blobs: large payloads kept by their maker and two more members, read from
any, repaired when a holder dies, bounded against any key holder (real peer
channels between in-process front doors)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
import trio

from hexamesh.serve.blobs import BlobDisk, BlobError, BlobRef, BlobRefused, Held, digest_of
from hexamesh.wire import KeyRing
from tests.serve.swarm import attach_blobs, start_door

PAYLOAD = os.urandom(300 * 1024)


async def _swarm(nursery: trio.Nursery, tmp: Path, n: int, dead: set[bytes]):  # type: ignore[no-untyped-def]
    ring = KeyRing.generate()
    doors = [await start_door(nursery, ring, i + 1) for i in range(n)]
    return doors, attach_blobs(doors, tmp, dead)


async def test_a_blob_is_held_by_three_read_anywhere_and_survives_a_holders_death(
    tmp_path: Path,
) -> None:
    dead: set[bytes] = set()
    async with trio.open_nursery() as nursery:
        doors, blobs = await _swarm(nursery, tmp_path, 6, dead)
        maker = doors[0].view.node
        ref = await blobs[maker].store(PAYLOAD, ttl=3600)
        assert len(ref.holders) == 3 and ref.holders[0] == maker
        for node in ref.holders:  # really on their disks
            assert blobs[node].disk.get(ref.id) == PAYLOAD
        reader = next(n for n in blobs if n not in ref.holders)
        assert await blobs[reader].fetch(ref) == PAYLOAD
        for node in ref.holders:  # each holder knows the others: nothing to repair
            assert await blobs[node].repair() == 0
        # the maker and one more holder die: the third still answers
        dead.update(ref.holders[:2])
        assert await blobs[reader].fetch(ref) == PAYLOAD
        # the survivor repairs: two new copies on the closest live members
        survivor = ref.holders[2]
        assert await blobs[survivor].repair() == 2
        held = blobs[survivor].disk.get_held(ref.id)
        assert held is not None and len(held.holders) == 3
        new = [n for n in held.holders if n != survivor]
        assert all(blobs[n].disk.get(ref.id) == PAYLOAD for n in new)
        assert await blobs[survivor].repair() == 0  # enough copies: nothing more
        # every named holder gone too: a reader finds a repaired copy by the key
        dead.add(survivor)
        assert await blobs[reader].fetch(ref) == PAYLOAD
        nursery.cancel_scope.cancel()


async def test_a_copy_that_is_not_the_blob_is_passed_over(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        doors, blobs = await _swarm(nursery, tmp_path, 4, set())
        ref = await blobs[doors[0].view.node].store(PAYLOAD, ttl=3600)
        liar = ref.holders[1]
        blobs[liar].disk.db.execute("UPDATE blobs SET data=? WHERE id=?", (b"junk", ref.id))
        blobs[ref.holders[0]].disk.delete(ref.id)
        reader = blobs[next(n for n in blobs if n not in ref.holders)]
        forged = BlobRef(ref.id, ref.digest, ref.size, (liar, *ref.holders))
        assert await reader.fetch(forged) == PAYLOAD  # from the third holder
        assert reader.bad_copies == 1
        blobs[ref.holders[2]].disk.delete(ref.id)
        with pytest.raises(BlobError, match="no holder"):  # junk is never taken for it
            await reader.fetch(forged)
        nursery.cancel_scope.cancel()


async def test_too_few_members_to_hold_it_is_an_error_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    dead: set[bytes] = set()
    async with trio.open_nursery() as nursery:
        doors, blobs = await _swarm(nursery, tmp_path, 3, dead)
        maker = blobs[doors[0].view.node]
        for other in doors[1:]:  # alive to the comb, but their disks are full
            blobs[other.view.node].disk.budget = 10
        with pytest.raises(BlobError, match="0 of 2"):
            await maker.store(PAYLOAD, ttl=60)
        assert maker.disk.held() == []
        for other in doors[1:]:
            assert blobs[other.view.node].disk.refused == 1
        # a swarm of one: it keeps its own copy (nobody else could)
        dead.update(d.view.node for d in doors[1:])
        ref = await maker.store(b"x" * 10, ttl=60)
        assert ref.holders == (maker.node,)
        nursery.cancel_scope.cancel()


def test_the_disk_refuses_what_breaks_its_bounds(tmp_path: Path) -> None:
    disk = BlobDisk(tmp_path / "b.sqlite", budget=4000, share=0.5)  # a row costs 1 KiB too
    now = time.time()
    me, other = b"m" * 20, b"o" * 20

    def held(bid: str, data: bytes, expires: float = now + 60) -> Held:
        return Held(bid, digest_of(data), len(data), expires, me, ())

    assert disk.put(held("a" * 32, b"x" * 400), b"x" * 400, sender=other, now=now)
    with pytest.raises(BlobRefused, match="of your blobs"):  # one sender: half the budget
        disk.put(held("b" * 32, b"y" * 200), b"y" * 200, sender=other, now=now)
    assert disk.put(held("c" * 32, b"z" * 450), b"z" * 450, sender=me, now=now)
    with pytest.raises(BlobRefused, match="as many blobs"):  # the whole budget
        disk.put(held("d" * 32, b"w" * 200), b"w" * 200, sender=b"t" * 20, now=now)
    with pytest.raises(BlobRefused, match="digest"):
        disk.put(held("e" * 32, b"v"), b"not v", sender=me, now=now)
    with pytest.raises(BlobRefused, match="another blob"):  # a known id, other content
        disk.put(held("a" * 32, b"q"), b"q", sender=me, now=now)
    assert not disk.put(held("a" * 32, b"x" * 400), b"x" * 400, sender=me, now=now)  # again
    with pytest.raises(BlobRefused, match="kept at most"):
        disk.put(held("f" * 32, b"u", now + 10**9), b"u", sender=me, now=now)
    assert disk.refused == 5
    assert disk.bytes_held() == 400 + 450 + 2 * 1024
    assert disk.expire(now + 120) == 2 and disk.bytes_held() == 0
    disk.put(held("8" * 32, b""), b"", sender=other, now=now)  # empty blobs are not free:
    with pytest.raises(BlobRefused, match="of your blobs"):  # their rows count
        disk.put(held("9" * 32, b""), b"", sender=other, now=now)


async def test_only_members_reach_blobs_and_only_the_maker_deletes_early(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        doors, blobs = await _swarm(nursery, tmp_path, 4, set())
        maker = blobs[doors[0].view.node]
        ref = await maker.store(PAYLOAD, ttl=3600)
        holder = ref.holders[1]
        holder_door = next(d for d in doors if d.view.node == holder)
        async with httpx.AsyncClient() as client:  # the API port: no blobs for clients
            r = await client.get(f"{holder_door.api.removesuffix('/v1')}/blobs/{ref.id}")
            assert r.status_code == 404
        other = blobs[next(n for n in blobs if n not in ref.holders)]
        addr = holder_door.peer_addr
        status, _, _ = await other._call(holder, addr, "DELETE", ref.id)
        assert status == 403 and blobs[holder].disk.get(ref.id) == PAYLOAD
        # a key that is not a live member (it passes the channel) pushes nothing
        stranger = await start_door(nursery, doors[0].front.keys.keyring, 99)
        outsider = attach_blobs([stranger], tmp_path, set())[stranger.view.node]
        head = [("x-hexamesh-blob-digest", digest_of(b"x")), ("x-hexamesh-blob-expires", "1e12")]
        head.append(("x-hexamesh-blob-owner", stranger.view.node.hex()))
        status, _, _ = await outsider._call(holder, addr, "PUT", "e" * 32, b"x", head)
        assert status == 403 and blobs[holder].disk.get("e" * 32) is None
        await maker.delete(ref)
        assert all(blobs[n].disk.get(ref.id) is None for n in ref.holders)
        nursery.cancel_scope.cancel()
