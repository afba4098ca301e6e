"""Relay cost without vLLM: CPU per streamed token of a front door, in isolation.

    python -m simulations.relaybench --json [--gap 0.005] [--tokens 128]

Three processes on 127.0.0.1: a stand-in upstream that streams ``--tokens``
chunked SSE events per request, one every ``--gap`` seconds (vLLM's pace per
stream), a front door whose local engine is that upstream, and the client
(this process, the lean client of ``simulations.loadgen``). For concurrency 1
and 16 it reports the front door's CPU time
(all threads, from /proc schedstat, ns) per token, and tokens/s. Then the
time to first token the door adds (``ttft_added_ms_p50``/``p99``):
``--ttft-pairs`` single one-token requests straight to the stand-in and
through the door, back to back, each over its own kept-alive connection, the
difference taken per pair; ``..._two_doors``: the same through a second door
in front of the first, the shape of the mesh path (a forward, then the
serving agent's relay) without vLLM, less the peer channel. Where
``overhead`` measures the real path with vLLM sharing the cores, this one
isolates the relay. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

import trio

from simulations.common import cpu_seconds, emit, percentile
from simulations.loadgen import closed_loop, ttft_added, workload

UPSTREAM = """
import json, sys, trio
GAP, TOKENS = float(sys.argv[1]), int(sys.argv[2])
EVENT = b'data: {"id":"cmpl-x","object":"text_completion","created":1,"model":"tiny","choices":[{"index":0,"text":" tok","logprobs":null,"finish_reason":null}]}\\n\\n'
CHUNK = b"%x\\r\\n%s\\r\\n" % (len(EVENT), EVENT)
async def handle(stream):  # keep-alive, like vLLM
    buf = b""
    while True:
        while b"\\r\\n\\r\\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                await stream.aclose()
                return
            buf += data
        head, _, body = buf.partition(b"\\r\\n\\r\\n")
        length = int([l.split(b":")[1] for l in head.split(b"\\r\\n") if l.lower().startswith(b"content-length")][0])
        while len(body) < length:
            body += await stream.receive_some(65536)
        buf = body[length:]
        tokens = json.loads(body[:length]).get("max_tokens") or TOKENS
        await stream.send_all(b"HTTP/1.1 200 OK\\r\\ncontent-type: text/event-stream\\r\\ntransfer-encoding: chunked\\r\\n\\r\\n")
        for _ in range(tokens):
            await stream.send_all(CHUNK)
            await trio.sleep(GAP)
        await stream.send_all(b"e\\r\\ndata: [DONE]\\n\\n\\r\\n0\\r\\n\\r\\n")
async def main():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(handle, listeners)
trio.run(main)
"""

DOOR = """
import sys, trio
from hexamesh.serve.frontdoor import FrontDoor
from hexamesh.identity import Identity
from hexamesh.net.channel import ChannelKeys
from hexamesh.serve.router import Candidate
from hexamesh.wire import KeyRing
class View:
    node = b"r" * 20
    async def refresh(self, model): return None
    def refresh_soon(self, model): return True
    def candidates(self, model): return [Candidate(node=self.node, local=True, load=0.0)]
    def address(self, node): return None
    def local_url(self, model): return "http://127.0.0.1:" + sys.argv[1]
    def models(self): return {"tiny": {self.node}}
async def main():
    keys = ChannelKeys(Identity.generate(), KeyRing.generate())
    front = FrontDoor(view=View(), keys=keys, address="bench")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(front.serve_connection, listeners)
trio.run(main)
"""


async def _run(base: str, concurrency: int, requests: int, tokens: int) -> int:
    got = await closed_loop(base, concurrency, requests, **workload(tokens))
    return int(got["tokens"])


async def _ttft_pairs(direct: str, door: str, pairs: int) -> list[float]:
    added = await ttft_added(direct, door, pairs, warm=5, pause=0.005, **workload(1))
    assert len(added) == pairs, "the stand-in or the door sent no token"  # such pairs drop out
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gap", type=float, default=0.005, help="s between tokens of a stream")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--ttft-pairs", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    procs: list[subprocess.Popen[str]] = []

    def start(code: str, *argv: str) -> tuple[subprocess.Popen[str], str]:
        """A process that prints its port first; (process, that port)."""
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, text=True, env=env
        )
        procs.append(proc)
        assert proc.stdout is not None
        return proc, proc.stdout.readline().strip()

    try:
        _, upstream_port = start(UPSTREAM, str(args.gap), str(args.tokens))
        door, door_port = start(DOOR, upstream_port)
        _, second_port = start(DOOR, door_port)  # a second door in front of the first
        base = f"http://127.0.0.1:{door_port}"
        direct = f"http://127.0.0.1:{upstream_port}"
        trio.run(_run, base, 4, 8, args.tokens)  # warm-up
        result: dict[str, Any] = {"gap_s": args.gap, "tokens_per_request": args.tokens}
        for conc, requests in ((1, 16), (16, 64)):
            c0, t0 = cpu_seconds(door.pid), time.perf_counter()
            got = trio.run(_run, base, conc, requests, args.tokens)
            wall = time.perf_counter() - t0
            result[f"cpu_us_per_token_c{conc}"] = round((cpu_seconds(door.pid) - c0) / got * 1e6, 1)
            result[f"tok_s_c{conc}"] = round(got / wall, 1)
        added = trio.run(_ttft_pairs, direct, base, args.ttft_pairs)
        result["ttft_added_ms_p50"] = percentile(added, 0.5)
        result["ttft_added_ms_p99"] = percentile(added, 0.99)
        two = trio.run(_ttft_pairs, direct, f"http://127.0.0.1:{second_port}", args.ttft_pairs)
        result["ttft_added_ms_p50_two_doors"] = percentile(two, 0.5)
        result["ttft_added_ms_p99_two_doors"] = percentile(two, 0.99)
    finally:
        for p in procs:
            p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
    emit(result, quiet=args.json)


if __name__ == "__main__":
    main()
