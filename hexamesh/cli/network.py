"""`hexamesh ping`, `peers` and `dht`: the swarm over the sealed wire, as a
holder of the key from outside it."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from random import Random
from typing import Annotated

import trio
import typer

from hexamesh.agent import (
    STATUS_FILE_NAME,
)
from hexamesh.cli.common import (
    DataDir,
    Join,
    SwarmKey,
    T,
    Token,
    _fail,
    _keyring,
    app,
    console,
    dht_app,
)
from hexamesh.comb.core import ViewReply
from hexamesh.config import (
    default_data_dir,
)
from hexamesh.dht.service import Dht, DhtError, open_dht_node
from hexamesh.identity import Identity, short_id
from hexamesh.net.base import format_addr, parse_addr
from hexamesh.net.driver import CoreDriver
from hexamesh.net.rtt import RttConfig, RttProbe, RttSample
from hexamesh.net.udp import open_udp_transport
from hexamesh.peerauth import Authenticator
from hexamesh.wire import Codec, KeyRing


async def _ping(
    target: tuple[str, int], ring: KeyRing, count: int, interval: float
) -> list[float | None]:
    identity = Identity.generate()  # a throwaway identity: ping needs no membership
    probe = RttProbe(identity.node_id, RttConfig(timeout=max(interval, 1.0)), Random())
    results: list[float | None] = []
    async with open_udp_transport("0.0.0.0", 0) as transport, trio.open_nursery() as nursery:
        driver = CoreDriver(
            probe, transport, Codec(ring, Authenticator(identity)), node_id=identity.node_id
        )
        samples = driver.subscribe(RttSample)
        await nursery.start(driver.run)
        timeout = max(interval, 1.0)
        for _ in range(count):
            probe.ping(target, trio.current_time())
            driver.poke()
            rtt: float | None = None
            with trio.move_on_after(timeout + 0.1):
                rtt = (await samples.receive()).rtt  # the pong, or the loss at the timeout
            results.append(rtt)
            shown = f"rtt {rtt * 1000:.2f} ms" if rtt is not None else "lost"
            console.print(f"{format_addr(target)}: {shown}")
            await trio.sleep(interval)
        nursery.cancel_scope.cancel()
    return results


@app.command()
def ping(
    addr: Annotated[str, typer.Argument(help="HOST:PORT of an agent")],
    count: Annotated[int, typer.Option("--count", "-c", min=1, max=1000)] = 3,
    interval: Annotated[float, typer.Option(min=0.0)] = 0.2,
    data_dir: DataDir = None,
    swarm_key: Annotated[Path | None, typer.Option(help="Swarm key file")] = None,
    token: Annotated[str | None, typer.Option(help="Join token instead of a key file")] = None,
) -> None:
    """Measure round-trip time to an agent over the sealed wire (needs the swarm key)."""
    ring, _ = _keyring(data_dir, swarm_key, token)
    try:
        target = parse_addr(addr)
    except ValueError as e:
        raise _fail(str(e)) from None
    results = trio.run(_ping, target, ring, count, interval)
    if all(r is None for r in results):
        raise _fail(f"no answer from {addr} (down, firewalled, or another swarm key)")


@app.command()
def peers(
    addr: Annotated[
        str | None,
        typer.Argument(help="HOST:PORT of an agent \\[default: the local one in --data-dir]"),
    ] = None,
    data_dir: DataDir = None,
    swarm_key: Annotated[Path | None, typer.Option(help="Swarm key file")] = None,
    token: Annotated[str | None, typer.Option(help="Join token instead of a key file")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead")] = False,
) -> None:
    """Show the honeycomb as an agent sees it: a hex map and a table of peers."""
    from hexamesh.comb.render import hex_map, peer_table, view_json
    from hexamesh.comb.service import fetch_view

    ring, token_seeds = _keyring(data_dir, swarm_key, token)
    if addr is None and token_seeds:
        addr = token_seeds[0]
    if addr is None:
        status_file = (data_dir or default_data_dir()) / STATUS_FILE_NAME
        try:
            addr = json.loads(status_file.read_text())["address"]
        except (OSError, ValueError, KeyError) as e:
            raise _fail(f"no running agent in {status_file.parent} ({e}); give HOST:PORT") from None
    try:
        target = parse_addr(addr)
    except ValueError as e:
        raise _fail(str(e)) from None

    async def ask() -> tuple[object, str | None]:
        try:
            return await fetch_view(ring, target), None
        except TimeoutError as e:
            return None, str(e)

    view, error = trio.run(ask)
    if error is not None or not isinstance(view, ViewReply):
        raise _fail(error or "no view")
    if as_json:
        console.print_json(data=view_json(view))
        return
    console.print(hex_map(view))
    console.print(peer_table(view))


async def _with_dht(
    ring: KeyRing, seeds: list[str], action: Callable[[Dht], Awaitable[T]]
) -> tuple[T | None, str | None]:
    """Join through ``seeds``, run ``action``; (result, None) or (None, error)."""
    addrs = [parse_addr(s) for s in seeds]
    async with open_dht_node(ring) as dht:
        # Errors are returned, not raised, so they do not leave the nursery as a group.
        try:
            if not await dht.bootstrap(addrs):
                return None, f"no DHT node answered at {', '.join(seeds)}"
            return await action(dht), None
        except DhtError as e:
            return None, str(e)


def _dht_args(
    join: list[str] | None, data_dir: Path | None, swarm_key: Path | None, token: str | None
) -> tuple[KeyRing, list[str]]:
    ring, token_seeds = _keyring(data_dir, swarm_key, token)
    seeds = [*(join or []), *token_seeds]
    if not seeds:
        raise _fail("give a seed with --join HOST:PORT (or --token)")
    try:
        for seed in seeds:
            parse_addr(seed)
    except ValueError as e:
        raise _fail(str(e)) from None
    return ring, seeds


@dht_app.command("get")
def dht_get(
    key: Annotated[str, typer.Argument(help="e.g. job:42, model:qwen, cell:0,1")],
    join: Join = None,
    data_dir: DataDir = None,
    swarm_key: SwarmKey = None,
    token: Token = None,
) -> None:
    """Look a key up and print its valid records (signature and expiry checked)."""
    ring, seeds = _dht_args(join, data_dir, swarm_key, token)

    records, error = trio.run(_with_dht, ring, seeds, lambda dht: dht.get(key))
    if error is not None:
        raise _fail(error)
    if not records:
        raise _fail(f"{key}: not found")
    for r in records:
        ttl = r.expires - time.time()
        value = r.value.decode("utf-8", errors="replace")
        console.print(
            f"{r.key}  publisher {short_id(r.publisher_id)}  seq {r.seq}  ttl {ttl:.0f}s  {value}"
        )


@dht_app.command("put")
def dht_put(
    key: Annotated[
        str, typer.Argument(help="e.g. job:42 (prefixes: cell, job, placement, model, vote)")
    ],
    value: Annotated[str, typer.Argument(help="UTF-8 text to store")],
    ttl: Annotated[
        float, typer.Option(min=1.0, max=86400.0, help="Seconds until it expires")
    ] = 600.0,
    join: Join = None,
    data_dir: DataDir = None,
    swarm_key: SwarmKey = None,
    token: Token = None,
) -> None:
    """Sign a record with a throwaway key and store it at the k closest nodes."""
    ring, seeds = _dht_args(join, data_dir, swarm_key, token)

    replicas, error = trio.run(
        _with_dht, ring, seeds, lambda dht: dht.put(key, value.encode(), ttl)
    )
    if error is not None:
        raise _fail(error)
    if not replicas:
        raise _fail(f"{key}: no node accepted the record")
    console.print(f"stored {key} on {replicas} nodes")
