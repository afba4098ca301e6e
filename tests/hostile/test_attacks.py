"""The attacks found by probing a running agent (issue 28), one regression test each.

Numbers follow the issue: 1-5 need no key (an outsider), 6-11 the swarm key
(any member). Each test failed before its fix. Floods of connections under a
lowered descriptor limit, and the whole agent after every attack, are in
``test_e2e_agent.py``; the fuzzers in ``test_fuzz.py``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from hexamesh.comb.swim import Gossip, MemberState, MemberUpdate, Swim, SwimConfig
from hexamesh.dht.records import Record
from hexamesh.faults import Component, Faults
from hexamesh.identity import Identity
from hexamesh.limits import MAX_ELECTION_TTL, MAX_HEARSAY, MODEL_CACHE
from hexamesh.logs import OneLineFormatter
from hexamesh.net import udp
from hexamesh.net.driver import CoreDriver
from hexamesh.net.memory import open_memory_network
from hexamesh.net.rtt import Ping, Pong, RttConfig, RttProbe
from hexamesh.net.udp import open_udp_transport
from hexamesh.placement.messages import Ballot, Proposal, Scout
from hexamesh.placement.order import sign_order
from hexamesh.placement.vote import ElectionState, PlacementConfig, Scouting
from hexamesh.serve import relay
from hexamesh.serve.jobs import Jobs, JobStore
from hexamesh.serve.view import CombView
from hexamesh.wire import Envelope, KeyRing
from simulations.hostile import BROKEN_ANSWERS
from tests.helpers import codec
from tests.helpers import nid as node_id
from tests.placement.helpers import OPERATOR, OPERATORS, order
from tests.serve.fake_upstream import Behaviour
from tests.serve.swarm import MODEL, entry_first_spare, start_door

A, B = ("10.0.0.1", 7420), ("10.0.0.2", 7420)


# -- outsiders ---------------------------------------------------------------------


async def test_1_a_silent_connection_to_the_peer_port_is_closed_and_the_agent_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A port scanner waiting for a banner: the sniffer's timeout left its first
    bytes unbound and the UnboundLocalError ended the whole transport."""
    monkeypatch.setattr(udp, "SNIFF_TIMEOUT", 0.2)
    with trio.fail_after(10):
        async with (
            open_udp_transport("127.0.0.1", 0) as ta,
            open_udp_transport("127.0.0.1", 0) as tb,
            trio.open_nursery() as nursery,
        ):
            a = RttProbe(node_id(1), RttConfig(), random.Random(1))
            b = RttProbe(node_id(2), RttConfig(), random.Random(2))
            await nursery.start(CoreDriver(a, ta, codec(1), node_id=node_id(1)).run)
            db = CoreDriver(b, tb, codec(2), node_id=node_id(2))
            await nursery.start(db.run)
            silent = await trio.open_tcp_stream(*ta.local_address)  # says nothing
            while ta.stats.silent < 1:
                await trio.sleep(0.02)
            assert await silent.receive_some(10) == b""  # closed by the agent
            b.ping(ta.local_address, trio.current_time())  # and the agent still answers
            db.poke()
            while b.srtt(ta.local_address) is None:
                await trio.sleep(0.01)
            await silent.aclose()
            nursery.cancel_scope.cancel()


async def test_3_deeply_nested_json_is_a_400_not_a_dropped_connection() -> None:
    """The parser's RecursionError escaped: no answer, a traceback per request."""
    ring = KeyRing.generate()
    async with trio.open_nursery() as nursery:
        door = await start_door(nursery, ring, 1, engine=Behaviour())
        async with httpx.AsyncClient(timeout=10) as client:
            deep = b'{"model": "tiny", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
            r = await client.post(f"{door.api}/completions", content=deep)
            assert r.status_code == 400 and "nests deeper" in r.json()["error"]["message"]
            inner: dict[str, Any] = {}
            nested = {"model": MODEL, "prompt": "hi", "logit_bias": inner}
            for _ in range(40):  # valid JSON, but past MAX_JSON_DEPTH
                inner["x"] = {}
                inner = inner["x"]
            r = await client.post(f"{door.api}/completions", json=nested)
            assert r.status_code == 400
            ok = await client.post(
                f"{door.api}/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}
            )
            assert ok.status_code == 200  # the same door serves on
        nursery.cancel_scope.cancel()


@dataclass
class _NoDht:
    looked_up: list[str] = field(default_factory=list)

    async def providers(self, model: str) -> list[Record]:
        self.looked_up.append(model)
        return []


class _Swim:
    def state_of(self, node: bytes) -> None:
        return None


class _Comb:
    swim = _Swim()


class _Honeycomb:
    """Just what CombView reads of the comb: nobody in view."""

    def __init__(self) -> None:
        self.node = node_id(1)
        self.cell = None
        self.dht = _NoDht()
        self.comb = _Comb()

    def peers_with(self, model: str) -> list[object]:
        return []

    def state_of(self, node: bytes) -> None:
        return None


async def test_4_unknown_model_names_cost_a_lookup_each_not_memory_for_ever() -> None:
    """150 requests naming new 100 KB models grew the agent by 14 MiB for good."""
    view = CombView(_Honeycomb(), None, 0.0)  # type: ignore[arg-type]
    for i in range(3 * MODEL_CACHE):
        name = f"no-such-model-{i}"
        await view.refresh(name)
        assert view.candidates(name) == []
    assert len(view._providers) == MODEL_CACHE and len(view._recent) == 0
    ring = KeyRing.generate()
    async with trio.open_nursery() as nursery:
        door = await start_door(nursery, ring, 1)
        async with httpx.AsyncClient(timeout=10) as client:
            huge = {"model": "m" * 100_000, "prompt": "hi"}
            r = await client.post(f"{door.api}/completions", json=huge)
            assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        nursery.cancel_scope.cancel()


async def test_5_junk_from_many_sources_warns_once_a_minute_in_all(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning per junk datagram per (spoofable) source address flooded the log."""
    async with open_memory_network(random.Random(1)) as net, trio.open_nursery() as nursery:
        core = RttProbe(node_id(2), RttConfig(), random.Random(2))
        driver = CoreDriver(core, net.endpoint(B), codec(2), node_id=node_id(2))
        await nursery.start(driver.run)
        for i in range(200):
            await net.endpoint((f"10.1.{i // 250}.{i % 250}", 7420)).send(B, b"junk %d" % i)
        await trio.sleep(1)
        warned = [r for r in caplog.records if r.levelname == "WARNING"]
        assert driver.stats.malformed == 200 and len(warned) == 1
        await trio.sleep(60)
        await net.endpoint(A).send(B, b"junk")
        await trio.sleep(1)
        warned = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warned) == 2 and "199 more since the last warning" in warned[1].getMessage()
        nursery.cancel_scope.cancel()


# -- holders of the swarm key ----------------------------------------------------------


def _swim(me: int = 1, incarnation: int = 0) -> Swim:
    swim = Swim(node_id(me), A, SwimConfig(), random.Random(me), 0.0, incarnation=incarnation)
    swim.add_member(node_id(2), B, 0, 0.0)
    swim.set_links([node_id(2)], 0.0)
    return swim


def _about(node: bytes, incarnation: int, state: MemberState, by: int = 2) -> MemberUpdate:
    return MemberUpdate(
        node=node, host="10.0.0.9", port=7420, incarnation=incarnation, state=state, by=node_id(by)
    )


def _gossip(*updates: MemberUpdate) -> Envelope:
    return Envelope(sender=node_id(2), msg_id=1, message=Gossip(updates=updates))


@pytest.mark.parametrize("incarnation", [2**64 - 1, 2**32, 5000])
def test_6_a_forged_death_at_a_huge_incarnation_is_refused(incarnation: int) -> None:
    """ "You are dead at 2^64-1": the refutation at 2^64 could not be sealed and
    the agent exited (and could never refute again anyway)."""
    swim = _swim(incarnation=3)  # kept from our last run
    swim.outbox()
    swim.receive(_gossip(_about(node_id(1), incarnation, MemberState.DEAD)), B, 1.0)
    assert swim.incarnation == 3 and swim.refused == 1
    swim.receive(_gossip(_about(node_id(1), 4, MemberState.SUSPECT)), B, 2.0)
    assert swim.incarnation == 5  # a real accusation is still refuted
    swim.receive(_gossip(_about(node_id(7), 2**63, MemberState.ALIVE)), B, 3.0)
    assert swim.state_of(node_id(7)) is None  # nor believed about others


async def test_6_a_message_that_cannot_be_sealed_is_dropped_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The driver caught only EncodeError when sealing; msgpack's OverflowError ended it."""

    class Overflowing(RttProbe):
        def receive(self, env: Envelope, sender: tuple[str, int], now: float) -> None:
            super().receive(env, sender, now)
            too_big = Pong(host="10.0.0.1", port=2**64)  # what a counter past 2^64 did
            self._outbox.append((sender, Envelope(sender=self.node_id, msg_id=1, message=too_big)))

    async with open_memory_network(random.Random(1)) as net, trio.open_nursery() as nursery:
        faults = Faults()
        core = Overflowing(node_id(2), RttConfig(), random.Random(2))
        driver = CoreDriver(core, net.endpoint(B), codec(2), node_id=node_id(2), faults=faults)
        await nursery.start(driver.run)
        ping = Envelope(sender=node_id(1), msg_id=5, message=Ping(host=B[0], port=B[1]))
        peer, one = net.endpoint(A), codec(1)
        for _ in range(3):
            await peer.send(B, one.seal(ping))
        await trio.sleep(1)
        assert driver.stats.received == 3 and faults.counts[Component.NET] == 3
        nursery.cancel_scope.cancel()


class _Runner:
    """A front door that must never be reached: the job is malformed."""

    async def fetch(self, req: object, priority: object) -> tuple[bytes, str]:
        raise AssertionError("a malformed job was run")

    def busy(self, model: str) -> bool:
        return False

    async def known_or_404(self, model: str) -> object:
        return []


class _JobsDht:
    def __init__(self, held: list[tuple[str, bytes, dict[str, Any]]], dead: bytes) -> None:
        self.held = held
        self.dead = dead
        self.stored: dict[str, list[tuple[bytes, dict[str, Any]]]] = {}

    async def put(self, key: str, value: bytes, ttl: float) -> int:
        from hexamesh.serve.jobs import decode_record

        doc = decode_record(value)
        assert doc is not None
        self.stored.setdefault(key, []).append((node_id(1), {**doc, "_seq": 1}))
        return 1

    async def get_records(self, key: str) -> list[tuple[bytes, dict[str, Any]]]:
        return self.stored.get(key, [])

    def held_jobs(self, prefix: str = "job:") -> list[tuple[str, bytes, dict[str, Any]]]:
        return self.held

    def is_dead(self, node: bytes) -> bool:
        return node == self.dead

    def is_member(self, node: bytes) -> bool:
        return True

    def withdraw(self, key: str) -> None:
        self.stored.pop(key, None)

    def alone(self) -> bool:
        return True  # the one agent under attack


@pytest.mark.parametrize(
    ("doc", "outcome"),
    [
        ({"id": "j1", "body": {}}, "failed"),  # the issue's: parse_completion outside any try
        ({"id": "j2", "model": "tiny", "body": {"prompt": "hi"}, "priority": "urgent"}, "dropped"),
        ({"id": "j3", "model": "tiny", "body": ["not", "an", "object"]}, "dropped"),
        ({"id": "j4", "body": {"model": "tiny", "prompt": "x", "n": 10**9}}, "failed"),
    ],
)
async def test_7_a_forged_job_record_fails_the_job_not_the_agent(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, doc: dict[str, Any], outcome: str
) -> None:
    """A ``job:`` record with body {} by a throwaway key, its publisher then
    gossiped dead: the takeover loop ran it and the agent exited."""
    throwaway = node_id(9)
    dht = _JobsDht([(f"job:{doc['id']}", throwaway, doc)], dead=throwaway)
    faults = Faults()
    jobs = Jobs(
        JobStore(tmp_path / "jobs.sqlite"),
        _Runner(),
        dht,
        owner="10.0.0.1:7420",
        node=node_id(1),
        max_jobs=4,
        faults=faults,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(jobs.run)
        await trio.sleep(30)  # a few takeover scans
        runs = dht.stored.get(f"jobrun:{doc['id']}", [])
        if outcome == "failed":  # taken over, then failed as a bad job, never run
            assert runs[-1][1]["state"] == "failed" and "bad job" in runs[-1][1]["error"]
        else:  # not even a job: counted, and not looked at again
            assert not runs and faults.counts[Component.JOBS] == 1
        nursery.cancel_scope.cancel()


async def test_8_a_broken_chunk_size_fails_one_stream_and_later_streams_still_flow() -> None:
    """A forged dance led a request to an attacker whose chunk size ``zz`` killed
    the relay thread: every later stream on that agent hung for ever."""
    ring = KeyRing.generate()
    bad = Behaviour(
        raw=b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\nzz\r\ndata: {}\r\n\r\n",
        raw_then="hang",
    )
    async with trio.open_nursery() as nursery:
        entry, _, spare = await entry_first_spare(nursery, ring, bad)
        body = {"model": MODEL, "prompt": "a b", "max_tokens": 4, "stream": True}
        async with httpx.AsyncClient(timeout=20) as client:
            for _ in range(3):  # the bad server fails each time; the spare answers
                async with client.stream("POST", f"{entry.api}/completions", json=body) as r:
                    text = "".join([line async for line in r.aiter_lines()])
                assert r.status_code == 200 and "[DONE]" in text, text
        assert bad.served and spare.behaviour is not None and len(spare.behaviour.served) >= 3
        assert entry.front.pumps.restarts == 0  # the loop lived: only the stream failed
        nursery.cancel_scope.cancel()


def _proposal(model: str, ttl: float, proposer: int, *, operator: Identity = OPERATOR) -> Envelope:
    """A proposal under an order of ``operator`` (the trusted one by default: a
    key holder that saw a real order can put it in ballots of its own)."""
    ballot = Ballot(
        model=model,
        source="/x",
        epoch=1,
        replicas=1,
        quorum=1,
        electorate=1,
        q=0,
        r=0,
        mem_need=0,
        proposer=Scout(node=node_id(proposer), host="10.0.0.9", port=7420),
        order=sign_order(operator, model, "/x", now=0.0),
    )
    scouts = (Scout(node=node_id(proposer), host="10.0.0.9", port=7420),)
    msg = Proposal(ballot=ballot, scouts=scouts, ttl=ttl)
    return Envelope(sender=node_id(proposer), msg_id=1, message=msg)


def test_9_forged_proposals_cannot_keep_an_operator_from_calling_a_vote() -> None:
    """16 proposals with ttl=1e15 filled the open-election limit: 409 for ever."""
    from hexamesh.comb.waggle import Dance

    me = Dance.first(node_id(1), A, 0, 0)
    core = Scouting(
        node_id(1),
        A,
        lambda: {me.node: me},
        PlacementConfig(),
        random.Random(1),
        operators=OPERATORS,
        is_member=lambda node: True,
    )
    for i in range(40):
        core.receive(_proposal(f"bait{i}", 1e15, 50 + i), ("10.0.0.50", 7420), 0.0)
    assert core.refused >= 40 - PlacementConfig().max_open
    core.propose(order("tiny", "/models/tiny"), 1, 7, 1.0)  # ours: still allowed
    core.handle_timer(MAX_ELECTION_TTL + 1.0)
    assert all(
        core.outcome(f"bait{i}", 1) is None
        or core.outcome(f"bait{i}", 1).state is not ElectionState.OPEN  # type: ignore[union-attr]
        for i in range(40)
    )  # every forged election closed within the API's bound


def test_10_forged_membership_news_cannot_grow_the_member_table_without_bound() -> None:
    """Updates naming unknown members were all kept."""
    swim = _swim()
    forged = [_about(i.to_bytes(20, "big"), 0, MemberState.DEAD) for i in range(1000, 1000 + 3000)]
    for start in range(0, len(forged), 32):
        swim.receive(_gossip(*forged[start : start + 32]), B, 1.0)
    assert len(swim.members) <= MAX_HEARSAY + 1  # (and our one link)
    assert swim.state_of(node_id(2)) is MemberState.ALIVE  # the link is never pushed out


def test_10_hearsay_over_the_cap_pushes_the_oldest_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from hexamesh.comb.swim import members

    monkeypatch.setattr(members, "MAX_HEARSAY", 10)
    swim = _swim()
    for i in range(25):
        swim.receive(_gossip(_about((5000 + i).to_bytes(20, "big"), 0, MemberState.DEAD)), B, 1.0)
    held = {n for n in swim.members if n != node_id(2)}
    assert held == {(5000 + i).to_bytes(20, "big") for i in range(15, 25)}
    # the deaths pushed out are remembered as forgotten (old news if they come
    # round again), within the same cap, the latest kept
    assert list(swim._reaped) == [(5000 + i).to_bytes(20, "big") for i in range(5, 15)]


def test_11_a_name_with_a_newline_cannot_forge_a_log_line() -> None:
    """``log.info("... %s", name)`` with ``name = "x\\nINFO hexamesh.agent: ..."``."""
    record = logging.LogRecord(
        "hexamesh.serve",
        logging.INFO,
        __file__,
        1,
        "serving %s",
        ("x\nINFO forged: \x1b[2J",),
        None,
    )
    line = OneLineFormatter("%(name)s: %(message)s").format(record)
    assert line == "hexamesh.serve: serving x\\nINFO forged: \\x1b[2J"
    assert "\n" not in line


async def test_11_a_model_name_with_control_characters_is_refused() -> None:
    ring = KeyRing.generate()
    async with trio.open_nursery() as nursery:
        door = await start_door(nursery, ring, 1)
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(
                f"{door.api}/completions", json={"model": "x\nINFO forged", "prompt": "hi"}
            )
            assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        nursery.cancel_scope.cancel()


SILENT = b""  # accepts, reads the request, never answers


@pytest.mark.parametrize(
    ("name", "answer", "then"),
    [(name, answer, then) for name, (answer, then) in BROKEN_ANSWERS.items()]
    + [("accepts and never answers", SILENT, "hang")],
)
async def test_a_broken_upstream_fails_one_request_over_and_the_relay_goes_on(
    monkeypatch: pytest.MonkeyPatch, name: str, answer: bytes, then: str
) -> None:
    """Malformed answers from a server (any peer may claim to serve a model):
    bad chunk sizes, truncated events, endless heads, silence. Each request
    moves on to the sound spare; the relay lives on."""
    monkeypatch.setattr(relay, "FIRST_BYTE_TIMEOUT", 1.0)  # the silent one, sooner
    ring = KeyRing.generate()
    bad = Behaviour(raw=answer, raw_then=then)
    async with trio.open_nursery() as nursery:
        entry, _, _ = await entry_first_spare(nursery, ring, bad)
        async with httpx.AsyncClient(timeout=30) as client:
            for stream in (True, False, True):
                body = {"model": MODEL, "prompt": "a b", "max_tokens": 3, "stream": stream}
                r = await client.post(f"{entry.api}/completions", json=body)
                assert r.status_code == 200, (name, r.text)
                if stream and name == "bad content-length":
                    continue  # a plain 200 body, streamed on as it came: not the relay's to judge
                assert "w2" in r.text  # the spare's answer
        assert bad.served and entry.front.pumps.restarts == 0
        nursery.cancel_scope.cancel()


async def test_a_peer_given_host_name_is_never_resolved() -> None:
    """A dance or record naming ``slow.example`` would make the sender's DNS
    server decide how long our send loop waits: only IP literals are dialled."""
    async with open_udp_transport("127.0.0.1", 0) as t:
        for addr in [("slow.example", 7420), ("10.0.0.1", 0), ("10.0.0.1", 70000)]:
            with trio.fail_after(1):
                await t.send(addr, b"x")
            with pytest.raises(OSError):
                await t.open_stream(addr)
        assert t.stats.send_errors == 3 and t.stats.datagrams_sent == 0
