"""CombView: when the DHT's providers back up the comb view."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import trio
import trio.testing

from hexamesh.comb.service import Honeycomb
from hexamesh.comb.waggle import Dance
from hexamesh.serve.router import MAX_ATTEMPTS
from hexamesh.serve.view import DHT_CACHE, DHT_TIMEOUT, CombView, wants_providers


@dataclass
class _Record:
    publisher_id: bytes
    value: bytes


@dataclass
class _Dht:
    lookups: list[str] = field(default_factory=list)
    hangs: bool = False  # a sick DHT: no answer before the lookup times out

    async def providers(self, key: str) -> list[_Record]:
        self.lookups.append(key)
        if self.hangs:
            await trio.sleep_forever()
        return []


@dataclass
class _Honeycomb:
    """What CombView.refresh reads of the honeycomb."""

    in_view: int
    dht: _Dht = field(default_factory=_Dht)
    node: bytes = b"m" * 20

    def peers_with(self, model: str) -> list[Dance]:
        return [
            Dance.first(bytes([i + 1]) * 20, ("10.0.0.1", 7420 + i), i, 0, models=(model,))
            for i in range(self.in_view)
        ]


def test_wants_providers_until_the_view_offers_every_attempt() -> None:
    assert wants_providers(0) and wants_providers(MAX_ATTEMPTS - 1)
    assert not wants_providers(MAX_ATTEMPTS)


async def test_providers_back_up_a_thin_view() -> None:
    for in_view, looked_up in [(0, True), (1, True), (MAX_ATTEMPTS, False)]:
        honeycomb = _Honeycomb(in_view)
        view = CombView(cast(Honeycomb, cast(Any, honeycomb)), None, trio.current_time())
        await view.refresh("tiny")
        await view.refresh("tiny")  # cached: one lookup per DHT_CACHE
        assert honeycomb.dht.lookups == (["tiny"] if looked_up else []), in_view


async def test_a_thin_view_is_backed_up_off_the_request_path(autojump_clock: object) -> None:
    for in_view, looked_up in [(1, True), (MAX_ATTEMPTS, False)]:
        honeycomb = _Honeycomb(in_view)
        view = CombView(cast(Honeycomb, cast(Any, honeycomb)), None, trio.current_time())
        async with trio.open_nursery() as nursery:
            await nursery.start(view.run)
            # never looked up: a thin view's caller waits for the first lookup
            assert view.refresh_soon("tiny") is not looked_up
            await view.refresh("tiny")
            await trio.sleep(DHT_CACHE + 1)  # stale: the next one runs behind the caller
            assert view.refresh_soon("tiny") and view.refresh_soon("tiny")  # pending: once
            assert len(honeycomb.dht.lookups) == looked_up  # not in the caller's time
            await trio.testing.wait_all_tasks_blocked()
            assert len(honeycomb.dht.lookups) == 2 * looked_up, in_view
            assert view.refresh_soon("tiny")  # fresh: nothing to do
            await trio.testing.wait_all_tasks_blocked()
            assert len(honeycomb.dht.lookups) == 2 * looked_up
            nursery.cancel_scope.cancel()


async def test_a_failed_lookup_is_held_like_an_answer(autojump_clock: object) -> None:
    honeycomb = _Honeycomb(1, _Dht(hangs=True))
    view = CombView(cast(Honeycomb, cast(Any, honeycomb)), None, trio.current_time())
    for key in ("tiny", None):
        start = trio.current_time()
        await view.refresh(key)
        assert trio.current_time() - start == DHT_TIMEOUT  # the one request that waited
        await view.refresh(key)  # the next ones do not, for DHT_CACHE s
        assert trio.current_time() - start == DHT_TIMEOUT
    assert view.refresh_soon("tiny")  # has candidates, and looked: nobody waits
    await trio.sleep(DHT_CACHE)
    await view.refresh("tiny")  # then it is asked again
    assert len(honeycomb.dht.lookups) == 3
