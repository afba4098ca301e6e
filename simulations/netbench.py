"""Network-layer benchmark: simulator throughput and the cost of the wire.

    python -m simulations.netbench --nodes 10000 --messages 1000000 --json

Three measurements, each beside a baseline taken in the same run (these
machines are noisy, so ratios are what to compare across runs):

* simulator: ``--nodes`` hosts each running a relay core that passes every
  envelope it receives to a random host, until ``--messages`` deliveries. The
  baseline is a bare ``heapq`` push + pop loop of the same length, the floor for
  any heap-driven event loop in Python. Run twice: without byte accounting
  (``sim_msgs_per_s``) and with the real codec sizing every envelope
  (``sim_sized_msgs_per_s``, on a tenth of the messages).
* sealing: ``Codec.seal`` + ``Codec.open`` of a 300-byte frame between two
  nodes that know each other, against raw ChaCha20-Poly1305 encrypt + decrypt
  of the same bytes; and the proof of the sender alone, both ends: ``auth_us``
  (a MAC with the pair's key, every frame once two nodes have spoken) and
  ``auth_signed_us`` (an Ed25519 signature, a first contact).
* the peer channel (forwards): ``channel_handshake_us``, a whole Noise
  handshake, both ends; ``channel_record_us``, sealing and opening one
  200-byte record (a streamed token's chunk), both ends, against raw
  ChaCha20-Poly1305 of the same bytes (``channel_record_vs_raw_aead``).
* codec: ``encode_frame`` + ``decode_frame`` (with schema validation), against
  raw ``msgpack.packb`` + ``unpackb`` of the same structure.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import heapq
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass, replace
from typing import Any

import msgpack
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from hexamesh.identity import Identity
from hexamesh.net.base import Addr
from hexamesh.net.noise import Initiator, Responder, Session
from hexamesh.net.sim import SimHost, SimNetwork, UniformLatency
from hexamesh.peerauth import Authenticator
from hexamesh.wire import (
    SEAL_OVERHEAD,
    Codec,
    Envelope,
    KeyRing,
    Message,
    decode_frame,
    encode_frame,
    message,
)
from simulations.common import emit


@message(0xFE01)  # 0xFExx: benchmark-only messages
@dataclass(frozen=True, slots=True, kw_only=True)
class Relay(Message):
    hops: int
    payload: bytes


class RelayCore:
    """Passes every envelope on to a random host (a random walk per token)."""

    def __init__(self, host: SimHost, addrs: list[Addr], budget: list[int]) -> None:
        self._rng = host.rng
        self._addrs = addrs
        self._budget = budget  # shared: [messages left to send]
        self._out: list[tuple[Addr, Envelope]] = []
        self._id = host.index.to_bytes(20, "big")

    def receive(self, env: Envelope, sender: Addr, now: float) -> None:
        if self._budget[0] <= 0:
            return
        self._budget[0] -= 1
        msg = env.message
        assert isinstance(msg, Relay)
        nxt = Envelope(
            sender=self._id,
            msg_id=env.msg_id,
            message=Relay(hops=msg.hops + 1, payload=msg.payload),
        )
        self._out.append((self._addrs[int(self._rng.random() * len(self._addrs))], nxt))

    def handle_timer(self, now: float) -> None:
        pass

    def next_timer(self) -> float | None:
        return None

    def outbox(self) -> list[tuple[Addr, Envelope]]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[object]:
        return []

    def start(self, dst: Addr, payload: bytes) -> None:
        self._out.append(
            (dst, Envelope(sender=self._id, msg_id=0, message=Relay(hops=0, payload=payload)))
        )


def bench_sim(nodes: int, messages: int, *, measure_bytes: bool, seed: int = 1) -> dict[str, float]:
    net = SimNetwork(seed=seed, latency=UniformLatency(0.0005, 0.005), measure_bytes=measure_bytes)
    addrs: list[Addr] = [
        (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 7420) for i in range(nodes)
    ]
    budget = [messages]
    for a in addrs:
        net.add_host(a, lambda host: RelayCore(host, addrs, budget))
    rng = random.Random(seed)
    tokens = min(nodes, 1000)  # messages in flight at once
    payload = bytes(200)
    for i in range(tokens):
        src = addrs[i * (nodes // tokens)]
        net.interact(src, lambda core, now: core.start(addrs[rng.randrange(nodes)], payload))
    t0 = time.perf_counter()
    net.run()
    wall = time.perf_counter() - t0
    return {
        "delivered": net.delivered,
        "wall_s": wall,
        "sim_time_s": net.now,
        "msgs_per_s": net.delivered / wall,
    }


def bench_heap_floor(count: int) -> float:
    """Events per second of a bare heapq push + pop loop: the floor for any heap loop."""
    heap: list[tuple[float, int, int]] = []
    rnd = random.Random(1).random
    for i in range(1000):
        heapq.heappush(heap, (rnd(), i, i))
    t0 = time.perf_counter()
    for i in range(count):
        t, _, x = heapq.heappop(heap)
        heapq.heappush(heap, (t + rnd(), i, x))
    return count / (time.perf_counter() - t0)


def _per_call_us(fn: Any, iterations: int) -> float:
    best = float("inf")
    for _ in range(5):  # best of 5: the least disturbed run
        t0 = time.perf_counter()
        for _ in range(iterations):
            fn()
        best = min(best, (time.perf_counter() - t0) / iterations)
    return best * 1e6


def bench_wire(iterations: int) -> dict[str, float]:
    # Payload sized so the plaintext frame is 300 bytes.
    alice, bob = Identity.generate(), Identity.generate()
    at_alice, at_bob = ("10.0.0.1", 7420), ("10.0.0.2", 7420)
    probe = Envelope(sender=alice.node_id, msg_id=2**63, message=Relay(hops=1, payload=b""))
    pad = 300 - len(encode_frame(probe)) - 2  # bin8 header grows by one byte at 32+
    env = Envelope(sender=alice.node_id, msg_id=2**63, message=Relay(hops=1, payload=bytes(pad)))
    frame = encode_frame(env)
    ring = KeyRing(os.urandom(32))
    a, b = Codec(ring, Authenticator(alice)), Codec(ring, Authenticator(bob))
    # One exchange each way: from now on each knows the other (PAIRED proofs).
    b.open(a.seal(env, to=at_bob), source=at_alice)
    a.open(b.seal(replace(env, sender=bob.node_id), to=at_alice), source=at_bob)
    sealed = a.seal(env, to=at_bob)
    first = a.seal(env)  # to an address we have not heard from: SIGNED
    aead = ChaCha20Poly1305(os.urandom(32))
    nonce = os.urandom(12)
    ct = aead.encrypt(nonce, frame, b"\x01")
    raw = (0xFE01, bytes(20), 2**63, (1, bytes(pad)))
    packed = msgpack.packb(raw)

    return {
        "frame_bytes": len(frame),
        "sealed_bytes": len(sealed),
        "seal_overhead_bytes": SEAL_OVERHEAD,
        "sealed_first_bytes": len(first),
        # both ends: seal + open, sender proven by a MAC of the pair
        "seal_open_us": _per_call_us(
            lambda: b.open(a.seal(env, to=at_bob), source=at_alice), iterations
        ),
        # the proof alone, both ends: a MAC of the pair (steady), a signature (first contact)
        "auth_us": _per_call_us(
            lambda: b.auth.unwrap(a.auth.wrap(frame, at_bob), at_alice), iterations
        ),
        "auth_signed_us": _per_call_us(
            lambda: b.auth.unwrap(a.auth.wrap(frame, None), None), max(iterations // 20, 50)
        ),
        "raw_aead_us": _per_call_us(
            lambda: (aead.encrypt(nonce, frame, b"\x01"), aead.decrypt(nonce, ct, b"\x01")),
            iterations,
        ),
        "codec_us": _per_call_us(lambda: decode_frame(encode_frame(env)), iterations),
        "raw_msgpack_us": _per_call_us(
            lambda: msgpack.unpackb(msgpack.packb(raw), use_list=False), iterations
        ),
        "raw_packed_bytes": len(packed),
    }


def bench_channel(iterations: int) -> dict[str, float]:
    alice, bob = Identity.generate(), Identity.generate()
    swarm = os.urandom(32)

    def handshake() -> tuple[Session, Session]:
        initiator = Initiator(alice, swarm, bob.node_id)
        responder = Responder(bob, (swarm,))
        third, mine = initiator.third(responder.second(initiator.first()))
        return mine, responder.finish(third)

    a, b = handshake()
    chunk = os.urandom(200)
    aead = ChaCha20Poly1305(os.urandom(32))
    nonce = os.urandom(12)
    ct = aead.encrypt(nonce, chunk, None)
    return {
        "channel_handshake_us": _per_call_us(handshake, max(iterations // 100, 20)),
        "channel_record_us": _per_call_us(lambda: b.opener.open(a.sealer.seal(chunk)), iterations),
        "raw_record_aead_us": _per_call_us(
            lambda: (aead.encrypt(nonce, chunk, None), aead.decrypt(nonce, ct, None)), iterations
        ),
    }


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--iterations", type=int, default=20_000, help="per wire timing")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = parser.parse_args(argv)

    floor = bench_heap_floor(args.messages)
    plain = bench_sim(args.nodes, args.messages, measure_bytes=False)
    sized = bench_sim(args.nodes, max(args.messages // 10, 1000), measure_bytes=True)
    wire = bench_wire(args.iterations)
    channel = bench_channel(args.iterations)
    result = {
        "benchmark": "netbench",
        "commit": _commit(),
        "python": platform.python_version(),
        "nodes": args.nodes,
        "messages": plain["delivered"],
        "sim_msgs_per_s": round(plain["msgs_per_s"]),
        "sim_sized_msgs_per_s": round(sized["msgs_per_s"]),
        "heap_floor_events_per_s": round(floor),
        "sim_vs_heap_floor": round(plain["msgs_per_s"] / floor, 3),
        "sim_sized_vs_unsized": round(sized["msgs_per_s"] / plain["msgs_per_s"], 3),
        "sim_wall_s": round(plain["wall_s"], 2),
        "seal_open_us": round(wire["seal_open_us"], 2),
        "raw_aead_us": round(wire["raw_aead_us"], 2),
        "seal_vs_raw_aead": round(wire["seal_open_us"] / wire["raw_aead_us"], 2),
        "auth_us": round(wire["auth_us"], 2),
        "auth_signed_us": round(wire["auth_signed_us"], 2),
        "channel_handshake_us": round(channel["channel_handshake_us"], 1),
        "channel_record_us": round(channel["channel_record_us"], 2),
        "channel_record_vs_raw_aead": round(
            channel["channel_record_us"] / channel["raw_record_aead_us"], 2
        ),
        "codec_us": round(wire["codec_us"], 2),
        "raw_msgpack_us": round(wire["raw_msgpack_us"], 2),
        "codec_vs_raw_msgpack": round(wire["codec_us"] / wire["raw_msgpack_us"], 2),
        "frame_bytes": wire["frame_bytes"],
        "sealed_bytes": wire["sealed_bytes"],
        "sealed_first_bytes": wire["sealed_first_bytes"],
    }
    emit(result, quiet=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
