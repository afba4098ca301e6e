"""The ``hexamesh`` command line (typer + rich)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import signal
import time
import types
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path
from random import Random
from typing import Annotated, Any, TypeVar

import httpx
import trio
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from hexamesh import __version__
from hexamesh.agent import (
    STATUS_FILE_NAME,
    AgentStatus,
    PreparedAgent,
    prepare_agent,
    run_agent,
)
from hexamesh.comb.core import ViewReply
from hexamesh.config import (
    DEFAULT_API_PORT,
    FLAGS,
    AgentConfig,
    ConfigError,
    default_data_dir,
    load_config,
)
from hexamesh.dht.service import Dht, DhtError, open_dht_node
from hexamesh.fileio import DataDirBusy
from hexamesh.identity import Identity, IdentityError, short_id
from hexamesh.logs import OneLineFormatter
from hexamesh.net.base import format_addr, parse_addr
from hexamesh.net.driver import CoreDriver
from hexamesh.net.rtt import RttConfig, RttProbe
from hexamesh.net.udp import open_udp_transport
from hexamesh.swarmkey import (
    SWARM_KEY_FILE_NAME,
    JoinToken,
    SwarmKeyError,
    create_key_file,
    load_key_file,
)
from hexamesh.wire import Codec, KeyRing

app = typer.Typer(
    help="hexamesh: a peer-to-peer swarm that serves LLM inference with no central coordinator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
swarm_app = typer.Typer(help="Create and share the swarm key.", no_args_is_help=True)
app.add_typer(swarm_app, name="swarm")
model_app = typer.Typer(help="Models for the engine.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("make-tiny")
def model_make_tiny(
    out: Annotated[Path, typer.Argument(help="Directory to write the model to")],
    seed: Annotated[int, typer.Option(help="Same seed, same weights and tokenizer")] = 0,
) -> None:
    """Write a tiny random-weight Llama model vLLM can serve (tests, demo; no hub)."""
    try:
        from hexamesh.engine.tiny import make_tiny_model
    except ImportError as e:  # pragma: no cover - depends on the install
        raise _fail(f"needs the engine extras (pip install 'hexamesh[cpu]'): {e}") from None
    try:
        make_tiny_model(out, seed=seed)
    except ImportError as e:
        raise _fail(f"needs the engine extras (pip install 'hexamesh[cpu]'): {e}") from None
    console.print(f"tiny model written to {out}")


dht_app = typer.Typer(
    help="Read and write the swarm's DHT through a short-lived node.", no_args_is_help=True
)
app.add_typer(dht_app, name="dht")

T = TypeVar("T")
console = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Node key and state [env: HEXAMESH_DATA_DIR]", show_default=False
    ),
]


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


def _key_path(data_dir: Path | None, explicit: Path | None) -> Path:
    """The swarm key file: the one named, or swarm.key in the data dir."""
    return explicit or (data_dir or default_data_dir()) / SWARM_KEY_FILE_NAME


def _setup_logging(level: str) -> None:
    handler = RichHandler(console=err, show_path=False)
    # one record, one line: peers' and clients' text in a message is escaped
    handler.setFormatter(OneLineFormatter("%(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # httpx logs every request at INFO: the engine's 1 s scrapes would flood the log
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


@app.command()
def version() -> None:
    """Print the hexamesh version."""
    console.print(f"hexamesh {__version__}")


@swarm_app.command("init")
def swarm_init(
    data_dir: DataDir = None,
    out: Annotated[
        Path | None, typer.Option(help="Key file (default <data-dir>/swarm.key)")
    ] = None,
) -> None:
    """Create a new swarm key (mode 0600). Every member needs a copy."""
    path = _key_path(data_dir, out)
    try:
        create_key_file(path)
    except SwarmKeyError as e:
        raise _fail(str(e)) from None
    console.print(f"wrote swarm key [bold]{path}[/] (mode 0600)")


@swarm_app.command("invite")
def swarm_invite(
    addr: Annotated[str, typer.Argument(help="HOST:PORT of a member that newcomers can reach")],
    data_dir: DataDir = None,
    key: Annotated[
        Path | None, typer.Option(help="Key file (default <data-dir>/swarm.key)")
    ] = None,
) -> None:
    """Print a join token (seed address + swarm key): a secret, share it carefully."""
    try:
        ring = load_key_file(_key_path(data_dir, key))
        host, port = parse_addr(addr)
    except (SwarmKeyError, ValueError) as e:
        raise _fail(str(e)) from None
    console.print(JoinToken(host, port, ring.primary).encode(), soft_wrap=True)


def _print_ready(status: AgentStatus) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("node id", f"[bold]{status.node_id}[/]")
    table.add_row("address", status.address)
    table.add_row("cell", status.cell or "being chosen (see `hexamesh peers`)")
    table.add_row("role", "founder of a new swarm" if status.founder else "joining")
    for seed in status.seeds:
        table.add_row("seed", seed)
    console.print(table)
    console.print("[dim]running; Ctrl-C or SIGTERM stops it[/]")


def _leaf_errors(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaf_errors(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _agent_main(agent: PreparedAgent) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_agent(agent, on_ready=_print_ready, task_status=task_status)
            )
            async for signum in signals:
                logging.getLogger("hexamesh").info("%s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    console.print("stopped")


_METAVARS = {str: "TEXT", int: "INTEGER", float: "FLOAT", Path: "PATH", bool: None}


def agent_parameters() -> list[inspect.Parameter]:
    """The `agent` command's options: one per ``AgentConfig`` field (its type,
    its default in the help, its text from ``config.FLAGS``), and --config."""
    hints = typing.get_type_hints(AgentConfig)
    params = []
    for f in dataclasses.fields(AgentConfig):
        flag = FLAGS[f.name]
        name = flag.name or f.name
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base = args[0] if typing.get_origin(tp) in (types.UnionType, typing.Union) else tp
        default = f.default if f.default is not dataclasses.MISSING else None
        dashed = name.replace("_", "-")
        decls: list[str] = []
        if typing.get_origin(base) is tuple:
            cli_type: Any = list[str]
            metavar = "TEXT"
            shown = ""  # repeatable: none unless given
        elif base is bool:
            cli_type, metavar = bool, None
            decls = [f"--{dashed}/--no-{dashed}"]
            shown = " \\[default: " + ("on" if default else "off") + "]"
        else:
            cli_type, metavar = base, _METAVARS[base]
            shown = "" if default is None else f" \\[default: {default}]"
        option = typer.Option(
            *decls, help=flag.help + shown, hidden=flag.hidden, show_default=False, metavar=metavar
        )
        params.append(_keyword(name, Annotated[cli_type | None, option]))
    config = typer.Option("--config", help="TOML config file [env: HEXAMESH_CONFIG]")
    params.append(_keyword("config", Annotated[Path | None, config]))
    return params


def _keyword(name: str, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def agent(**options: Any) -> None:
    """Run an agent on this machine until Ctrl-C / SIGTERM.

    Every option can also come from a HEXAMESH_<NAME> environment variable or
    the TOML file given by --config; flags win over the environment, which wins
    over the file.
    """
    config = options.pop("config")
    flag_of = {FLAGS[f.name].name or f.name: f.name for f in dataclasses.fields(AgentConfig)}
    overrides = {
        flag_of[name]: (value or None) if isinstance(value, list) else value
        for name, value in options.items()
    }
    try:
        cfg = load_config(config, overrides=overrides)
    except ConfigError as e:
        raise _fail(str(e)) from None
    _setup_logging(cfg.log_level)
    try:
        prepared = prepare_agent(cfg)
    except (DataDirBusy, IdentityError, SwarmKeyError) as e:
        raise _fail(str(e)) from None
    try:
        trio.run(_agent_main, prepared)
    except BaseExceptionGroup as group:
        # Binding or resolving failed inside the nursery: say so, no traceback.
        errors = _leaf_errors(group)
        if errors and all(isinstance(e, OSError) for e in errors):
            raise _fail(f"cannot start the agent: {errors[0]}") from None
        raise


agent.__signature__ = inspect.Signature(agent_parameters())  # type: ignore[attr-defined]
app.command()(agent)


async def _ping(
    target: tuple[str, int], ring: KeyRing, count: int, interval: float
) -> list[float | None]:
    identity = Identity.generate()  # a throwaway identity: ping needs no membership
    probe = RttProbe(identity.node_id, RttConfig(timeout=max(interval, 1.0)), Random())
    results: list[float | None] = []
    async with open_udp_transport("0.0.0.0", 0) as transport, trio.open_nursery() as nursery:
        driver = CoreDriver(probe, transport, Codec(ring), node_id=identity.node_id)
        await nursery.start(driver.run)
        timeout = max(interval, 1.0)
        for _ in range(count):
            probe.ping(target, trio.current_time())
            driver.poke()
            rtt: float | None = None
            with trio.move_on_after(timeout + 0.1):
                while True:
                    samples = probe.samples()
                    if samples:
                        rtt = samples[0].rtt
                        break
                    await trio.sleep(0.002)  # a CLI, not a hot path: polling is fine
            results.append(rtt)
            shown = f"rtt {rtt * 1000:.2f} ms" if rtt is not None else "lost"
            console.print(f"{format_addr(target)}: {shown}")
            await trio.sleep(interval)
        nursery.cancel_scope.cancel()
    return results


def _keyring(
    data_dir: Path | None, swarm_key: Path | None, token: str | None
) -> tuple[KeyRing, list[str]]:
    """The swarm key ring from a token or a key file, and the token's seed if any."""
    try:
        if token:
            t = JoinToken.decode(token)
            return KeyRing(t.key), [format_addr((t.host, t.port))]
        return load_key_file(_key_path(data_dir, swarm_key)), []
    except SwarmKeyError as e:
        raise _fail(str(e)) from None


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


@app.command()
def demo(
    agents: Annotated[int, typer.Option(min=1, max=32, help="Agents to start")] = 7,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
    workdir: Annotated[Path, typer.Option(help="Where the agents keep their data")] = Path(".demo"),
    engines: Annotated[
        int, typer.Option(min=0, help="Agents that run vLLM on the tiny model (0 = comb only)")
    ] = 2,
    model: Annotated[
        Path | None, typer.Option(help="Model dir for the engines \\[default: make the tiny model]")
    ] = None,
) -> None:
    """Start a local swarm on 127.0.0.1 (2 agents with vLLM), send a prompt to an
    agent without the model, show the streamed answer, who served it and the comb;
    Ctrl-C stops everything."""
    from hexamesh.demo import run_demo

    code = run_demo(
        console, agents=agents, duration=duration, workdir=workdir, engines=engines, model=model
    )
    raise typer.Exit(code=code)


Join = Annotated[
    list[str] | None, typer.Option(help="Seed HOST:PORT (repeatable)", show_default=False)
]
SwarmKey = Annotated[Path | None, typer.Option(help="Swarm key file")]
Token = Annotated[str | None, typer.Option(help="Join token instead of a key file and seed")]


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


# -- using the swarm: submit, jobs, models ------------------------------------

jobs_app = typer.Typer(
    help="Durable jobs: submit now, collect later, from any peer.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")

PeerUrl = Annotated[
    str | None,
    typer.Option(
        "--peer",
        help="Any agent's API, e.g. http://127.0.0.1:7421/v1 \\[default: this machine's agent]",
        envvar="HEXAMESH_PEER",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", help="Bearer key", envvar="HEXAMESH_API_KEY")
]


def _api_url(peer: str | None, data_dir: Path | None) -> str:
    """The API to talk to: --peer, else the local agent's (agent.json), else the default port."""
    if peer:
        url = peer.rstrip("/")
        if "://" not in url:
            url = "http://" + url
        return url if url.endswith("/v1") else url + "/v1"
    status_file = (data_dir or default_data_dir()) / STATUS_FILE_NAME
    try:
        api = json.loads(status_file.read_text()).get("api")
        if api:
            return str(api)
    except (OSError, ValueError):
        pass
    return f"http://127.0.0.1:{DEFAULT_API_PORT}/v1"


def _client(api_key: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(headers=headers, timeout=httpx.Timeout(600.0, connect=5.0))


def _check(r: httpx.Response) -> dict[str, Any]:
    try:
        doc = r.json()
    except ValueError:
        doc = {}
    if r.status_code >= 400:
        err = doc.get("error", {}) if isinstance(doc, dict) else {}
        raise _fail(f"{r.status_code}: {err.get('message') or r.text[:200]}")
    return doc if isinstance(doc, dict) else {}


def _first_model(client: httpx.Client, url: str) -> str:
    models = _check(client.get(f"{url}/models")).get("data", [])
    if not models:
        raise _fail("the swarm serves no model yet (start an agent with --model)")
    return str(models[0]["id"])


@app.command()
def submit(
    prompt: Annotated[str, typer.Argument(help="The prompt")],
    peer: PeerUrl = None,
    model: Annotated[str | None, typer.Option(help="Model \\[default: the first served]")] = None,
    stream: Annotated[bool, typer.Option(help="Print tokens as they come")] = True,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate")] = 64,
    chat: Annotated[bool, typer.Option(help="Use the chat endpoint")] = False,
    api_key: ApiKey = None,
    data_dir: DataDir = None,
) -> None:
    """Send a prompt to any peer and print the answer (and who served it)."""
    url = _api_url(peer, data_dir)
    try:
        with _client(api_key) as client:
            model = model or _first_model(client, url)
            body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": stream}
            if chat:
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                body["prompt"] = prompt
            path = f"{url}/chat/completions" if chat else f"{url}/completions"
            if not stream:
                r = client.post(path, json=body)
                choice = _check(r)["choices"][0]
                text = choice.get("text") or (choice.get("message") or {}).get("content", "")
                print(text)
                _served(r.headers)
                return
            with client.stream("POST", path, json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    _check(r)
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise _fail(f"stream broke off: {event['error'].get('message')}")
                    for c in event.get("choices", []):
                        piece = c.get("text") or (c.get("delta") or {}).get("content") or ""
                        print(piece, end="", flush=True)
                print()
                _served(r.headers)
    except httpx.HTTPError as e:
        raise _fail(f"cannot reach {url}: {e}") from None


def _served(headers: httpx.Headers) -> None:
    node = headers.get("x-hexamesh-served-by", "?")
    err.print(f"[dim]served by {node[:12]} ({headers.get('x-hexamesh-server', '?')})[/]")


@app.command()
def models(peer: PeerUrl = None, api_key: ApiKey = None, data_dir: DataDir = None) -> None:
    """Models the swarm serves (through any peer)."""
    url = _api_url(peer, data_dir)
    try:
        with _client(api_key) as client:
            data = _check(client.get(f"{url}/models")).get("data", [])
    except httpx.HTTPError as e:
        raise _fail(f"cannot reach {url}: {e}") from None
    table = Table("model", "servers")
    for m in data:
        table.add_row(str(m["id"]), str(m.get("servers", "?")))
    console.print(table)


@jobs_app.command("submit")
def jobs_submit(
    prompt: Annotated[str, typer.Argument(help="The prompt")],
    peer: PeerUrl = None,
    model: Annotated[str | None, typer.Option(help="Model \\[default: the first served]")] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate")] = 64,
    priority: Annotated[str, typer.Option(help="high, medium or low")] = "medium",
    job_id: Annotated[
        str | None, typer.Option("--id", help="Your own id (a retry with it never runs twice)")
    ] = None,
    api_key: ApiKey = None,
    data_dir: DataDir = None,
) -> None:
    """Queue a job; prints its id."""
    url = _api_url(peer, data_dir)
    try:
        with _client(api_key) as client:
            body: dict[str, Any] = {
                "model": model or _first_model(client, url),
                "prompt": prompt,
                "max_tokens": max_tokens,
                "priority": priority,
            }
            if job_id:
                body["id"] = job_id
            doc = _check(client.post(f"{url}/jobs", json=body))
    except httpx.HTTPError as e:
        raise _fail(f"cannot reach {url}: {e}") from None
    print(doc["id"])


@jobs_app.command("status")
def jobs_status(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    peer: PeerUrl = None,
    api_key: ApiKey = None,
    data_dir: DataDir = None,
) -> None:
    """A job's status (JSON), asked of any peer."""
    url = _api_url(peer, data_dir)
    try:
        with _client(api_key) as client:
            doc = _check(client.get(f"{url}/jobs/{job_id}"))
    except httpx.HTTPError as e:
        raise _fail(f"cannot reach {url}: {e}") from None
    print(json.dumps(doc, indent=2))


@jobs_app.command("collect")
def jobs_collect(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    peer: PeerUrl = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it")] = 300.0,
    api_key: ApiKey = None,
    data_dir: DataDir = None,
) -> None:
    """Wait for a job and print its answer."""
    url = _api_url(peer, data_dir)
    deadline = time.monotonic() + timeout
    try:
        with _client(api_key) as client:
            while True:
                doc = _check(client.get(f"{url}/jobs/{job_id}"))
                if doc["status"] == "done":
                    choice = doc["result"]["choices"][0]
                    print(choice.get("text") or (choice.get("message") or {}).get("content", ""))
                    return
                if doc["status"] == "failed":
                    raise _fail(f"job {job_id} failed: {doc.get('error')}")
                if time.monotonic() > deadline:
                    raise _fail(f"job {job_id} still {doc['status']} after {timeout:.0f} s")
                time.sleep(0.5)
    except httpx.HTTPError as e:
        raise _fail(f"cannot reach {url}: {e}") from None


@app.command()
def place(
    model: Annotated[str, typer.Argument(help="Name to serve the model under")],
    source: Annotated[
        str | None,
        typer.Option(
            help="What the winners load: a DIR on their machines or a hub id \\[default: MODEL]"
        ),
    ] = None,
    replicas: Annotated[int, typer.Option(help="New replicas wanted (1-8)")] = 1,
    ttl: Annotated[
        float | None, typer.Option(help="Seconds the vote stays open (1-60) \\[default: 10]")
    ] = None,
    peer: PeerUrl = None,
    api_key: ApiKey = None,
    data_dir: DataDir = None,
) -> None:
    """Call a placement vote: the scouts near the peer elect agents with room to
    load the model. No quorum by the deadline: nothing moves (exit code 1)."""
    url = _api_url(peer, data_dir)
    body: dict[str, Any] = {"model": model, "source": source or model, "replicas": replicas}
    if ttl is not None:
        body["ttl"] = ttl
    try:
        with _client(api_key) as client:
            doc = _check(client.post(f"{url}/placements", json=body))
    except httpx.HTTPError as e:
        raise _fail(f"cannot reach {url}: {e}") from None
    console.print(
        f"election {doc['model']}@{doc['epoch']}: {doc['scouts']} scouts, quorum {doc['quorum']}"
    )
    if not doc["winners"]:  # the vote ran and decided nothing: 1, not an error's 2
        err.print("no quorum: nothing moved")
        raise typer.Exit(code=1)
    table = Table("slot", "node", "address")
    for w in doc["winners"]:
        table.add_row(str(w["slot"]), w["node"][:16], w["address"])
    console.print(table)
    console.print(f"placed {len(doc['winners'])} of {doc['replicas']}; loading on the winners")


@app.command()
def chaos(
    agents: Annotated[int, typer.Option(help="Agent processes to start")] = 7,
    kill: Annotated[int, typer.Option(help="Agents SIGKILLed at once each round")] = 2,
    rounds: Annotated[int, typer.Option(help="Kill rounds")] = 1,
    freeze: Annotated[
        bool,
        typer.Option(
            help="SIGSTOP the victims instead (a hung process: alive to TCP, silent), "
            "and SIGCONT them to bring them back"
        ),
    ] = False,
    restart: Annotated[
        bool, typer.Option(help="Restart the victims after each round and time their return")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds a round may take")] = 60.0,
    seed: Annotated[int | None, typer.Option(help="Seed for the choice of victims")] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Keep the agents' data dirs and logs here \\[default: a temp dir]"),
    ] = None,
    json_only: Annotated[bool, typer.Option("--json", help="Only the JSON line")] = False,
) -> None:
    """Kill real agent processes on this machine and time how the swarm notices.

    Starts AGENTS agents on 127.0.0.1, SIGKILLs KILL of them (never the
    founder), or freezes them (--freeze), watches the survivors declare them
    dead (over the wire, every 0.25 s), then restarts (or thaws) them and
    watches them come back. Last line: one JSON object."""
    from hexamesh.chaos import ChaosConfig, run_chaos

    try:
        config = ChaosConfig(
            agents=agents,
            kill=kill,
            rounds=rounds,
            restart=restart,
            freeze=freeze,
            timeout=timeout,
            seed=seed,
        )
    except ValueError as e:
        raise _fail(str(e)) from None
    say = (lambda s: None) if json_only else (lambda s: err.print(s))
    try:
        result = run_chaos(config, workdir=workdir, progress=say)
    except (TimeoutError, RuntimeError) as e:  # the swarm never settled, or an agent exited
        raise _fail(f"chaos stopped: {e}") from None
    if not json_only:
        for key, value in result.items():
            if key != "per_round":
                err.print(f"{key:>20}: {value}")
    print(json.dumps(result))
    if any(result[k] for k in ("undetected", "false_positives", "not_back", "never_clean")):
        raise typer.Exit(code=1)


@app.command()
def simulate(
    nodes: Annotated[int, typer.Option(help="Agents in the simulated swarm")] = 200,
    servers: Annotated[float, typer.Option(help="Fraction of them serving the model")] = 0.1,
    minutes: Annotated[float, typer.Option(help="Simulated minutes of requests")] = 5.0,
    rate: Annotated[float, typer.Option(help="Requests per second, swarm-wide")] = 20.0,
    tokens: Annotated[int, typer.Option(help="Tokens generated per request")] = 128,
    loss: Annotated[float, typer.Option(help="Datagram loss probability")] = 0.01,
    kill: Annotated[float, typer.Option(help="Fraction of nodes SIGKILLed at once")] = 0.0,
    kill_at: Annotated[float, typer.Option(help="When, in s after the first request")] = 60.0,
    vanish: Annotated[
        bool,
        typer.Option(
            help="Killed and crashed nodes vanish (power or network lost: no TCP reset, "
            "their connections go silent) instead of their processes dying"
        ),
    ] = False,
    freeze: Annotated[
        bool,
        typer.Option(
            help="Killed and crashed nodes freeze (SIGSTOP, a hang: their connections stay "
            "up and go silent) and later thaw where they stopped, instead of dying"
        ),
    ] = False,
    restart_after: Annotated[
        float | None, typer.Option(help="Restart the killed after this many s \\[default: never]")
    ] = None,
    churn: Annotated[float, typer.Option(help="Crashes per node per minute")] = 0.0,
    churn_at: Annotated[
        float, typer.Option(help="When churn begins, s after the first request")
    ] = 60.0,
    downtime: Annotated[float, typer.Option(help="s a crashed node stays down")] = 30.0,
    partition_at: Annotated[
        float | None, typer.Option(help="Cut the comb in two halves at this s \\[default: never]")
    ] = None,
    heal_at: Annotated[float | None, typer.Option(help="Heal the cut at this s")] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same run")] = 1,
    report: Annotated[
        Path | None, typer.Option(help="Write report.md, plots and summary.json here")
    ] = None,
    json_only: Annotated[bool, typer.Option("--json", help="Only the JSON line")] = False,
) -> None:
    """Run a whole swarm on simulated time and break it on purpose.

    Every node runs the real comb core (SWIM, waggle) on the network
    simulator; servers are vLLM stand-ins with measured service times; clients
    send requests to random live nodes, which route and fail over as the front
    door does. Faults: a mass SIGKILL (or machines vanishing, or agents
    freezing), churn, a partition, datagram loss. Last
    line: one JSON object. Exit 1 if a request hung (no outcome)."""
    from hexamesh.simulate.report import ReportError, write_report
    from hexamesh.simulate.swarm import Scenario, run_scenario
    from hexamesh.simulate.util import no_cycle_collector

    try:
        scenario = Scenario(
            nodes=nodes,
            servers=servers,
            minutes=minutes,
            rate=rate,
            tokens=tokens,
            loss=loss,
            kill=kill,
            kill_at=kill_at,
            vanish=vanish,
            freeze=freeze,
            restart_after=restart_after,
            churn=churn,
            churn_at=churn_at,
            downtime=downtime,
            partition_at=partition_at,
            heal_at=heal_at,
            seed=seed,
        )
    except ValueError as e:
        raise _fail(str(e)) from None

    def say(line: str) -> None:
        if not json_only:
            err.print(line)

    with no_cycle_collector():
        result, sim = run_scenario(scenario, progress=say)
    if report is not None:
        try:
            files = write_report(sim, result, report)
        except ReportError as e:
            raise _fail(str(e)) from None
        say(f"report: {files[-1]}")
    if not json_only:
        for key, value in result.items():
            err.print(f"{key:>24}: {value}")
    print(json.dumps(result))
    if result["hung"]:
        raise typer.Exit(code=1)


def main() -> None:
    app()
