"""Hostile inputs against one real agent: the attacks of issue 28, then fuzzers.

    python -m simulations.hostile --json                 # the whole table + 60 s of fuzz
    python -m simulations.hostile --fuzz-seconds 10 --json

Starts one agent process, founder of its own swarm, with a stand-in engine
(``tests.engine.fake_vllm``) serving ``tiny``, its API on 127.0.0.1, and its
descriptor limit lowered to ``--nofile`` (so a connection flood meets it).
Then runs every attack of the table as an outsider (no key) and as a holder
of the swarm key, and after each one checks the agent: ``/health`` answers,
a newcomer can join (its view and a DHT bootstrap), a completion through it
works. Then the fuzzers for ``--fuzz-seconds``: well-formed sealed messages
of every registered wire type with extreme values (``HostileMessages``), and
random JSON and bytes to the API, checking the agent every few seconds.

The table runs twice. The first pass fills every bound an attacker can
reach (the members heard of, the DHT store, the caches: the memory each
costs at its bound is in docs/operator.md); ``rss_growth_mib`` is what the
second pass and the fuzzers add on top, where a leak would show.

Printed: ``tried`` (inputs sent), ``crashed`` (1 if the agent exited),
``hung`` (checks that did not finish in ``CHECK_TIMEOUT``), ``five_xx`` (5xx
answers to requests the agent could serve: its own model, or malformed ones;
an answer saying every server failed is right for a model only a hostile
server offers, and not counted), ``unanswered`` (HTTP requests closed with
no answer at all), ``degraded_services`` (services restarted), and
``rss_first_pass_mib`` and ``rss_growth_mib`` (above). Targets: 0, 0, 0,
0, 0 and <= 5 MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import trio

from hexamesh.agent.rotate import handoff_body
from hexamesh.comb.service import fetch_view
from hexamesh.comb.swim import Gossip, MemberState, MemberUpdate
from hexamesh.comb.waggle import Dance, HopDance, WaggleMsg
from hexamesh.demo import start_agent, wait_until
from hexamesh.dht.messages import Store
from hexamesh.dht.records import sign_record
from hexamesh.dht.service import open_dht_node
from hexamesh.identity import Identity
from hexamesh.invites import InviteError, InviteToken, redeem
from hexamesh.limits import AUTH_PEERS
from hexamesh.net.base import parse_addr
from hexamesh.net.channel import ChannelKeys
from hexamesh.net.driver import StreamHello
from hexamesh.net.rtt import Ping
from hexamesh.operator import OPERATOR_KEY_FILE_NAME, create_operator_key
from hexamesh.peerauth import Authenticator
from hexamesh.placement.messages import Ballot, Proposal, Scout
from hexamesh.placement.order import sign_order
from hexamesh.revocation import Revoke, sign_revocation
from hexamesh.rotation import sign_rotation
from hexamesh.serve.jobseal import JobSeal
from hexamesh.serve.peerroute import route_headers
from hexamesh.serve.relay import Peer, open_upstream, read_body, request_bytes
from hexamesh.swarmkey import load_key_file
from hexamesh.wire import MAX_DATAGRAM, Codec, Envelope, Message, message_types
from simulations.common import emit

CHECK_TIMEOUT = 20.0  # s for one round of checks (health, join, completion)
NOFILE = 256  # the agent's descriptor limit (soft and hard): a flood must meet it
MODEL = "tiny"
STAND_IN = "tests.engine.fake_vllm"
ADMIN_KEY = "hostile-admin-key"  # the target's admin key: the operator's, not the attacker's


@dataclass
class Tally:
    tried: int = 0
    hung: int = 0
    five_xx: int = 0
    unanswered: int = 0
    failures: list[str] = field(default_factory=list)  # what went wrong, for the reader

    def answer(self, status: int | None, *, own: bool = True, what: str = "") -> None:
        """An HTTP answer to one of our requests (None: none at all)."""
        if status is None:
            self.unanswered += 1
            self.failures.append(f"no answer: {what}")
        elif status >= 500 and own:
            self.five_xx += 1
            self.failures.append(f"{status}: {what}")


class Target:
    """The agent under attack: its process, addresses, key and identity."""

    def __init__(self, workdir: Path, nofile: int) -> None:
        model = workdir / "tiny"
        model.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / "agent"

        def lower_limit() -> None:  # in the child, before exec: its hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.operator = create_operator_key(self.data_dir / OPERATOR_KEY_FILE_NAME)
        self.proc = start_agent(
            self.data_dir,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--model",
            f"{MODEL}={model}",
            "--engine-module",
            STAND_IN,
            preexec=lower_limit,
            env={"HEXAMESH_ADMIN_KEYS": ADMIN_KEY},
        )
        status = self.proc.wait_ready()
        self.node = bytes.fromhex(status["node_id"])
        self.addr = parse_addr(status["address"])
        self.ring = load_key_file(self.data_dir / "swarm.key")
        self.attacker = Identity.generate()  # a swarm key holder
        self._codecs: dict[bytes, Codec] = {}
        wait_until(
            "the stand-in engine to be ready",
            lambda: (self.status().get("models", {}).get(MODEL) or {}).get("state") == "ready",
            60,
            procs=[self.proc],
        )
        self.api = str(self.status()["api"])

    def status(self) -> dict[str, Any]:
        return self.proc.status() or {}

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    def alive(self) -> bool:
        return self.proc.proc.poll() is None

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def codec(self, identity: Identity) -> Codec:
        """What ``identity`` seals with (one per key: its counters go up)."""
        codec = self._codecs.get(identity.node_id)
        if codec is None:
            codec = self._codecs[identity.node_id] = Codec(self.ring, Authenticator(identity))
        return codec

    def send(
        self,
        message: Message,
        *,
        sender: Identity | None = None,
        claim: bytes | None = None,
        msg_id: int = 1,
    ) -> None:
        """One sealed datagram (or stream, if large) from a throwaway socket,
        proven by ``sender``'s key (the attacker's if None); ``claim``: another
        node's id to write in the envelope instead (impersonation)."""
        sender = sender or self.attacker
        codec = self.codec(sender)
        env = Envelope(sender=claim or sender.node_id, msg_id=msg_id, message=message)
        data = codec.seal(env, limit=1 << 20)
        if len(data) <= MAX_DATAGRAM:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(data, self.addr)
            return
        hello = codec.seal(Envelope(sender=env.sender, msg_id=0, message=StreamHello(port=9)))
        with socket.create_connection(self.addr, timeout=CHECK_TIMEOUT) as s:
            for frame in (hello, data):
                s.sendall(len(frame).to_bytes(4, "big") + frame)

    def stop(self) -> None:
        self.proc.stop()


# -- checks ---------------------------------------------------------------------


def check(target: Target, tally: Tally, what: str) -> bool:
    """The agent is up: /health, a newcomer's view and DHT join, a completion."""
    if not target.alive():
        return False
    health = _request(tally, "GET", target.api.removesuffix("/v1") + "/health")
    body = {"model": MODEL, "prompt": "one two", "max_tokens": 3}
    answer = _request(tally, "POST", f"{target.api}/completions", json=body)
    ok = health == answer == 200
    try:
        joined = trio.run(_join, target)
    except TimeoutError:
        tally.hung += 1
        tally.failures.append(f"hung: a join after {what}")
        return False
    if not joined:
        tally.failures.append(f"no join after {what}")
    return ok and joined


async def _join(target: Target) -> bool:
    """What a newcomer does first: ask the agent's view, bootstrap the DHT through it."""
    with trio.fail_after(CHECK_TIMEOUT):
        view = await fetch_view(target.ring, target.addr, timeout=5.0)
        async with open_dht_node(target.ring, host="127.0.0.1") as dht:
            neighbours = await dht.bootstrap([target.addr], [])
    return view.placed and bool(neighbours)


# -- the attacks ---------------------------------------------------------------------

Attack = Callable[[Target, Tally], None]


def _http(tally: Tally, method: str, url: str, *, own: bool = True, **kw: Any) -> int | None:
    """One attacking request: counted as tried, its answer judged."""
    tally.tried += 1
    return _request(tally, method, url, own=own, **kw)


def _request(tally: Tally, method: str, url: str, *, own: bool = True, **kw: Any) -> int | None:
    """An HTTP request's status; None (and counted) if it hung or got no answer."""
    try:
        r = httpx.request(method, url, timeout=CHECK_TIMEOUT, **kw)
    except httpx.TimeoutException:
        tally.hung += 1
        tally.failures.append(f"hung: {method} {url[:80]}")
        return None
    except httpx.HTTPError as e:
        tally.answer(None, what=f"{method} {url[:80]}: {e}")
        return None
    tally.answer(r.status_code, own=own, what=f"{method} {url[:80]}")
    return r.status_code


def silent_connections(t: Target, tally: Tally) -> None:
    """1: connections to the peer port that say nothing (port scanners); and a
    scan: connect and close at once."""
    held = []
    for _ in range(50):
        held.append(socket.create_connection(t.addr, timeout=5))
        tally.tried += 1
    for _ in range(50):
        socket.create_connection(t.addr, timeout=5).close()
        tally.tried += 1
    time.sleep(6.0)  # past SNIFF_TIMEOUT: the agent closed them
    for s in held:
        s.close()


def connection_flood(t: Target, tally: Tally) -> None:
    """2: more idle connections to each port than the agent has descriptors;
    then one-byte connections on the peer port, which must not block forwards."""
    for port in (t.addr[1], int(t.api.rsplit(":", 1)[1].split("/")[0])):
        held = []
        for _ in range(NOFILE * 2):
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
            tally.tried += 1
        # while they are held, the agent still answers datagrams and a health check
        # on a connection it admits by evicting an idle one (or says 503, busy)
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(t.api.removesuffix("/v1") + "/health", timeout=5)
        for s in held:
            s.close()
    held = []
    for _ in range(200):
        try:
            s = socket.create_connection(t.addr, timeout=2)
            s.sendall(b"P")  # HTTP begun, never finished
            held.append(s)
            tally.tried += 1
        except OSError:
            break
    for s in held:
        s.close()


def nested_json(t: Target, tally: Tally) -> None:
    """3: deeply nested JSON in a request body."""
    deep = b'{"model": "tiny", "prompt": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    _http(tally, "POST", f"{t.api}/completions", content=deep)
    _http(tally, "POST", f"{t.api}/jobs", content=deep[:6000])


def unknown_model_names(t: Target, tally: Tally) -> None:
    """4: requests naming unique 100 KB models (and unique short ones)."""
    for i in range(150):
        name = f"{i}-" + "m" * 100_000
        _http(tally, "POST", f"{t.api}/completions", json={"model": name, "prompt": "x"})
    for i in range(300):  # past the model caches' bound (MODEL_CACHE)
        _http(tally, "POST", f"{t.api}/completions", json={"model": f"nope-{i}", "prompt": "x"})


def junk_datagrams(t: Target, tally: Tally) -> None:
    """5: junk from many source addresses (all of 127/8 is loopback), and junk
    on every port: UDP, the peer port's TCP side, the API."""
    for i in range(2, 250):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((f"127.0.{i // 250}.{i}", 0))
            for _ in range(4):
                s.sendto(os.urandom(random.randint(0, 1400)), t.addr)
                tally.tried += 1
    for port in (t.addr[1], int(t.api.rsplit(":", 1)[1].split("/")[0])):
        for first in (b"\x00", b"G", b"\xff", b"\x16\x03\x01"):  # frame, HTTP, junk, TLS
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=2) as s,
            ):
                s.sendall(first + os.urandom(4000))
                tally.tried += 1
    _http(tally, "POST", f"{t.api}/completions", content=os.urandom(5000))


def slow_head(t: Target, tally: Tally) -> None:
    """A head that never ends (slowloris): 408 after HEAD_TIMEOUT, not a held slot."""
    with socket.create_connection(
        ("127.0.0.1", int(t.api.rsplit(":", 1)[1].split("/")[0])), timeout=30
    ) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        tally.tried += 1
        answer = s.recv(200)
        if not answer.startswith(b"HTTP/1.1 408"):
            tally.answer(None, what=f"a slow head got {answer[:40]!r}")


def incarnation_bombs(t: Target, tally: Tally) -> None:
    """6: "you are dead at 2^64-1" (and at 2^32, and far ahead of ours)."""
    for inc in (2**64 - 1, 2**63, 2**32, 2**31, 10_000):
        for state in (MemberState.DEAD, MemberState.SUSPECT):
            update = MemberUpdate(
                node=t.node, host=t.addr[0], port=t.addr[1], incarnation=inc, state=state,
                by=os.urandom(20),
            )  # fmt: skip
            t.send(Gossip(updates=(update,)))
            tally.tried += 1
    time.sleep(1.0)


def forged_job(t: Target, tally: Tally) -> None:
    """7: a ``job:`` record with body {} by a throwaway key, sealed with the
    swarm key as members seal them (``jobseal``), its publisher then gossiped
    dead: the takeover runs it (and must fail it, not crash)."""
    thrower = Identity.generate()
    seal = JobSeal(t.ring)
    for i, body in enumerate(({}, {"prompt": 1}, [1, 2], {"model": MODEL, "n": 10**9})):
        doc = {"id": f"forged{i}", "model": MODEL, "body": body, "state": "queued"}
        key = f"job:forged{i}"
        value = seal.seal(key, bytes(msgpack.packb(doc)))
        record = sign_record(thrower, key, value, seq=1, expires=time.time() + 600)
        t.send(Store(record=record), sender=thrower)
        tally.tried += 1
    death = MemberUpdate(
        node=thrower.node_id, host="127.0.0.9", port=9, incarnation=0, state=MemberState.DEAD,
        by=os.urandom(20),
    )  # fmt: skip
    t.send(Gossip(updates=(death,)))
    time.sleep(12.0)  # two takeover scans


def _hostile_server(answer: bytes, then: str) -> tuple[socket.socket, threading.Thread]:
    """A 'server' that reads a request and answers ``answer``, then closes or hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with contextlib.suppress(OSError):
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(answer)
                if then == "hang":
                    time.sleep(3600)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


BROKEN_ANSWERS = {
    "bad chunk size": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "hang"),
    "truncated event": (
        b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n20\r\ndata: {"choices": [{',
        "close",
    ),
    "endless head": (b"HTTP/1.1 200 OK\r\n" + b"x-a: " + b"b" * 200_000, "hang"),
    "bad content-length": (b"HTTP/1.1 200 OK\r\ncontent-length: \xb9\xb2\r\n\r\n{}", "close"),
    "bad status line": (b"HTTP/1.1 2\xb2\xb3 OK\r\n\r\n", "close"),
    "endless chunk": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffff\r\n" + b"x" * 3_000_000,
        "hang",
    ),
}


def forged_dances(t: Target, tally: Tally) -> None:
    """8: forged dances offering model "bait" at a hostile server's address; the
    agent forwards a client's request there. Each broken answer must fail one
    request (an error the client can read), never the relay."""
    for name, (answer, then) in BROKEN_ANSWERS.items():
        listener, _ = _hostile_server(answer, then)
        port = listener.getsockname()[1]
        liar = Identity.generate()  # a key holder dancing a model it sends to its server
        bait = f"bait-{name.replace(' ', '-')}"
        dance = Dance(
            node=liar.node_id, host="127.0.0.1", port=port, q=1, r=0, incarnation=0, status="up",
            models=(bait,), load=0.0, queue=0, kv=0.0, tok_s=0.0, gpu_used=0, gpu_total=0,
            uptime=0.0, version=1,
        )  # fmt: skip
        for _ in range(3):
            t.send(WaggleMsg(dances=(HopDance(dance=dance, hops=2),)), sender=liar)
            time.sleep(0.2)
        for stream in (True, False):
            body = {"model": bait, "prompt": "x", "max_tokens": 4, "stream": stream}
            # every server for it failed: a 502 is the right answer here
            _http(tally, "POST", f"{t.api}/completions", own=False, json=body)
        listener.close()


def forged_proposals(t: Target, tally: Tally) -> None:
    """9: proposals with ttl=1e15 fill the open-election limit; the operator's
    /v1/placements must still start a vote. Half carry orders the attacker
    signed itself (refused: no authority), half real orders of the operator
    (as if captured from votes it saw)."""
    for i in range(40):
        key = Identity.generate()
        proposer = Scout(node=key.node_id, host="127.0.0.9", port=9)
        signer = t.attacker if i % 2 else t.operator
        ballot = Ballot(
            model=f"forged{i}", source="/x", epoch=1, replicas=1, quorum=1, electorate=1,
            q=0, r=0, mem_need=0, proposer=proposer,
            order=sign_order(signer, f"forged{i}", "/x", now=time.time()),
        )  # fmt: skip
        msg = Proposal(ballot=ballot, scouts=(proposer,), ttl=1e15)
        t.send(msg, sender=key)
        tally.tried += 1
    status = _http(
        tally,
        "POST",
        f"{t.api}/placements",
        json={"model": "tiny2", "source": "/nowhere", "replicas": 1, "ttl": 1},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    if status != 200:
        tally.failures.append(f"an operator's placement was refused ({status})")


def forged_members(t: Target, tally: Tally) -> None:
    """10: membership news naming 20,000 unknown members."""
    for start in range(0, 20_000, 32):
        updates = tuple(
            MemberUpdate(
                node=os.urandom(20),
                host="127.0.0.9",
                port=9,
                incarnation=0,
                state=MemberState.DEAD,
                by=os.urandom(20),
            )
            for _ in range(min(32, 20_000 - start))
        )
        t.send(Gossip(updates=updates))
        tally.tried += 1
        if start % 3200 == 0:
            time.sleep(0.05)  # not a socket-buffer overflow test
    time.sleep(1.0)


def dht_flood(t: Target, tally: Tally) -> None:
    """Records of 8 KiB from throwaway keys (each within its publisher quota):
    the store's total bytes bound them, not only their count."""
    for i in range(1500):
        thrower = Identity.generate()
        key = f"job:flood{random.getrandbits(64):x}"
        record = sign_record(thrower, key, os.urandom(8000), seq=1, expires=time.time() + 3600)
        t.send(Store(record=record), sender=thrower)
        tally.tried += 1
        if i % 100 == 0:
            time.sleep(0.05)


def many_keys(t: Target, tally: Tally) -> None:
    """A key holder with a fresh node key per frame, each from its own socket
    (the agent keeps a pair key and a replay window per key, and a key per
    address: AUTH_PEERS of each); then one frame replayed, and frames in the
    target's own name (both refused)."""
    ping = Ping(host=t.addr[0], port=t.addr[1])
    for _ in range(AUTH_PEERS + 256):
        key = Identity.generate()
        data = Codec(t.ring, Authenticator(key)).seal(
            Envelope(sender=key.node_id, msg_id=1, message=ping)
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(data, t.addr)
        tally.tried += 1
    captured = t.codec(t.attacker).seal(
        Envelope(sender=t.attacker.node_id, msg_id=2, message=ping), to=t.addr
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(3):
            s.sendto(captured, t.addr)
            tally.tried += 1
    for _ in range(10):
        t.send(ping, claim=t.node)
        tally.tried += 1


def log_forgery(t: Target, tally: Tally) -> None:
    """11: a model name with a newline."""
    forged = "x\nINFO hexamesh.agent: forged line"
    _http(tally, "POST", f"{t.api}/completions", json={"model": forged, "prompt": "x"})
    log = (t.data_dir / "agent.log").read_text(errors="replace")
    if any(line.startswith("INFO hexamesh.agent: forged") for line in log.splitlines()):
        tally.failures.append("a forged log line")
        tally.unanswered += 1


def forged_authority(t: Target, tally: Tally) -> None:
    """A key holder's own revocations (of strangers, and of the target), its
    own key rotation handed over the peer channel, and invites it guessed:
    none may be taken (issue 31)."""
    for i in range(400):
        victim = t.node if i % 50 == 0 else os.urandom(20)
        forged = sign_revocation(t.attacker, victim, now=time.time())
        t.send(Revoke(revocation=forged))
        tally.tried += 1
    key = os.urandom(32)
    rotation = sign_rotation(t.attacker, key, now=time.time(), use_after=1, retire_after=2)
    status = trio.run(_hand_key, t, json.dumps(handoff_body(key, rotation)).encode())
    tally.tried += 1
    if status != 403:
        tally.failures.append(f"a key holder's rotation was answered {status}, not 403")
    for _ in range(20):  # an invite's secret guessed: refused at the first message
        tally.tried += 1
        if trio.run(_redeem_guess, t):
            tally.failures.append("a guessed invite was taken")
    time.sleep(0.5)
    r = httpx.get(f"{t.api}/swarm/revocations", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    if r.status_code != 200 or r.json()["data"]:
        tally.failures.append(f"forged revocations taken: {r.text[:200]}")
    if len(load_key_file(t.data_dir / "swarm.key").keys) != 1:
        tally.failures.append("a key holder's key was installed")


async def _hand_key(t: Target, body: bytes) -> int:
    """POST /swarm/key over a peer channel, as a member hands a rotation on."""
    request = request_bytes(
        "POST", *t.addr, "/swarm/key", body, route_headers(t.attacker.node_id, None)
    )
    with trio.fail_after(CHECK_TIMEOUT):
        up = await open_upstream(
            *t.addr, request, peer=Peer(t.node, ChannelKeys(t.attacker, t.ring))
        )
        try:
            await read_body(up)
        finally:
            await up.aclose()
    return up.status


async def _redeem_guess(t: Target) -> bool:
    guess = InviteToken(t.addr[0], t.addr[1], t.node, os.urandom(32), 0)
    try:
        await redeem(guess, Identity.generate())
    except InviteError:
        return False
    return True


ATTACKS: list[tuple[str, Attack]] = [
    ("1 silent connections", silent_connections),
    ("2 connection flood", connection_flood),
    ("3 nested JSON", nested_json),
    ("4 unknown model names", unknown_model_names),
    ("5 junk on every port", junk_datagrams),
    ("slow head", slow_head),
    ("6 incarnation bombs", incarnation_bombs),
    ("7 forged job record", forged_job),
    ("8 forged dances, broken servers", forged_dances),
    ("9 forged proposals", forged_proposals),
    ("10 forged members", forged_members),
    ("11 log forgery", log_forgery),
    ("DHT store flood", dht_flood),
    ("many keys, replays, frames in its name", many_keys),
    ("forged revocations, rotations, invites", forged_authority),
]


# -- fuzzers ----------------------------------------------------------------------

EXTREME_INTS = [0, 1, -1, 2**31, 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1]
EXTREME_FLOATS = [0.0, -0.0, 1e-308, 1e308, -1e308, 0.5, 1e15]


class HostileMessages:
    """Well-formed messages of every registered type, with extreme values, and
    node ids that name the target itself or strangers (a seeded generator, so
    a run replays; ``tests/hostile/test_fuzz.py`` draws the same with hypothesis)."""

    def __init__(self, rng: random.Random, target: bytes) -> None:
        self.rng = rng
        self.target = target
        self.types = [c for t, c in sorted(message_types().items()) if t < 0xFF00]

    def message(self) -> Message:
        cls = self.rng.choice(self.types)
        return self.value(cls, 0)

    def value(self, tp: Any, depth: int) -> Any:
        import dataclasses
        import enum
        import types
        import typing

        from hexamesh.wire import Struct, field_limits

        tp, exact, limit = field_limits(tp)
        r = self.rng
        if tp is bool:
            return r.random() < 0.5
        if tp is int:
            return r.choice(EXTREME_INTS)
        if tp is float:
            return r.choice(EXTREME_FLOATS)
        if tp is str:
            n = exact if exact is not None else r.choice([0, 1, min(limit or 64, 64)])
            return "".join(r.choice("a\n\x00é\u2028/:.") for _ in range(n))
        if tp is bytes:
            if exact == 20:
                return r.choice([self.target, os.urandom(20), bytes(20)])
            return os.urandom(exact if exact is not None else r.choice([0, 16]))
        if isinstance(tp, type) and issubclass(tp, enum.IntEnum):
            return r.choice(list(tp))
        origin = typing.get_origin(tp)
        if origin in (types.UnionType, typing.Union):
            (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
            return None if r.random() < 0.3 else self.value(inner, depth)
        if origin is tuple:
            args = typing.get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                n = r.choice([0, 1, 2, min(limit or 4, 4)]) if depth < 2 else 0
                item = self.value(args[0], depth + 1)
                return tuple(item for _ in range(n))  # duplicated on purpose
            return tuple(self.value(a, depth + 1) for a in args)
        if isinstance(tp, type) and issubclass(tp, Struct):
            hints = typing.get_type_hints(tp, include_extras=True)
            for _ in range(20):  # some structs check their fields: draw until one passes
                kwargs = {
                    f.name: self.value(hints[f.name], depth + 1)
                    for f in dataclasses.fields(typing.cast(Any, tp))
                    if f.init
                }
                try:
                    return tp(**kwargs)
                except (TypeError, ValueError):
                    continue
            raise ValueError(f"no valid {tp.__name__} drawn")
        raise TypeError(f"no value for {tp!r}")


def fuzz(target: Target, tally: Tally, seconds: float, seed: int) -> None:
    """Hostile wire messages and HTTP bodies for ``seconds``, checking every 5 s."""
    rng = random.Random(seed)
    messages = HostileMessages(rng, target.node)
    end = time.monotonic() + seconds
    next_check = time.monotonic() + 5.0
    while time.monotonic() < end and target.alive():
        for _ in range(50):
            try:
                msg = messages.message()
            except ValueError:
                continue
            with contextlib.suppress(OSError, ValueError):
                # as the attacker, or in the target's own name (dropped: forged)
                target.send(msg, claim=rng.choice([target.node, None]))
                tally.tried += 1
        body = {
            "model": rng.choice([MODEL, "", "x" * 300, 7, None]),
            "prompt": rng.choice(["hi", [1, 2], [], {"a": 1}, 1e308]),
            rng.choice(["n", "best_of", "logprobs", "max_tokens", "stop", "zz"]): rng.choice(
                [*EXTREME_INTS, 1e308, "x", [], None]
            ),
        }
        status = _http(tally, "POST", f"{target.api}/completions", json=body)
        if status == 200 and body["model"] != MODEL:
            tally.failures.append(f"200 for {body}")
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 5.0
            check(target, tally, "fuzzing")
        time.sleep(0.01)


# -- the run --------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    tally = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        target = Target(Path(tmp), args.nofile)
        try:
            for _ in range(3):  # warm-up: the checks' own paths, then the baseline
                check(target, tally, "warm-up")
            time.sleep(1.0)
            start = target.rss_mib()
            print(f"start: RSS {start:.1f} MiB", file=sys.stderr, flush=True)
            for round_ in (1, 2):
                if round_ == 2:
                    filled = target.rss_mib()
                for name, attack in ATTACKS:
                    if not target.alive():
                        break
                    attack(target, tally)
                    if not check(target, tally, name):
                        tally.failures.append(f"checks failed after {name}")
                    if target.alive():
                        rss = target.rss_mib()
                        print(f"{round_}/{name}: RSS {rss:.1f} MiB", file=sys.stderr, flush=True)
            if target.alive() and args.fuzz_seconds > 0:
                print(f"fuzzing for {args.fuzz_seconds:g} s", file=sys.stderr, flush=True)
                fuzz(target, tally, args.fuzz_seconds, args.seed)
            for _ in range(3):
                check(target, tally, "the end")
            time.sleep(1.0)
            if target.alive():
                print(f"the end: RSS {target.rss_mib():.1f} MiB", file=sys.stderr, flush=True)
            crashed = not target.alive()
            rss = target.rss_mib() if not crashed else 0.0
            services = target.status().get("services", {})
            degraded = sum(1 for s in services.values() if s.get("restarts"))
            errors = target.status().get("errors", {})
        finally:
            log = (target.data_dir / "agent.log").read_text(errors="replace")
            log_tail = log[-2000:]
            target.stop()
    if args.log:
        args.log.write_text(log)
    for failure in tally.failures[:30]:
        print(f"  {failure}", file=sys.stderr)
    if crashed:
        print(log_tail, file=sys.stderr)
    return {
        "simulation": "hostile",
        "attacks": len(ATTACKS),
        "fuzz_seconds": args.fuzz_seconds,
        "nofile": args.nofile,
        "tried": tally.tried,
        "crashed": int(crashed),
        "hung": tally.hung,
        "five_xx": tally.five_xx,
        "unanswered": tally.unanswered,
        "degraded_services": degraded,
        "contained_errors": errors,  # units of work the agent dropped, by component
        # The first pass fills every bound the attacks can reach (hearsay members,
        # the DHT store, caches); the second, and the fuzz, must add nothing.
        "rss_first_pass_mib": round(filled - start, 1),
        "rss_growth_mib": round(rss - filled, 1) if not crashed else None,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fuzz-seconds", type=float, default=60.0)
    parser.add_argument("--nofile", type=int, default=NOFILE)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--log", type=Path, help="keep the agent's log here (the tracebacks of contained errors)"
    )
    args = parser.parse_args(argv)
    result = run(args)
    emit(result, quiet=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
