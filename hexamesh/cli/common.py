"""What the commands share: the app and its groups, options, errors, logging, the API client."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.logging import RichHandler

from hexamesh.agent import (
    STATUS_FILE_NAME,
)
from hexamesh.config import (
    DEFAULT_API_PORT,
    default_data_dir,
)
from hexamesh.identity import Identity, write_secret_file
from hexamesh.logs import OneLineFormatter
from hexamesh.net.base import format_addr
from hexamesh.operator import OperatorKeyError, load_operator_key
from hexamesh.swarmkey import (
    SWARM_KEY_FILE_NAME,
    JoinToken,
    SwarmKeyError,
    load_key_file,
)
from hexamesh.wire import KeyRing

app = typer.Typer(
    help="hexamesh: a peer-to-peer swarm that serves LLM inference with no central coordinator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


swarm_app = typer.Typer(help="Create and share the swarm key.", no_args_is_help=True)


app.add_typer(swarm_app, name="swarm")


model_app = typer.Typer(help="Models for the engine.", no_args_is_help=True)


app.add_typer(model_app, name="model")


dht_app = typer.Typer(
    help="Read and write the swarm's DHT through a short-lived node.", no_args_is_help=True
)


app.add_typer(dht_app, name="dht")


jobs_app = typer.Typer(
    help="Durable jobs: submit now, collect later, from any peer.", no_args_is_help=True
)


app.add_typer(jobs_app, name="jobs")


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


Join = Annotated[
    list[str] | None, typer.Option(help="Seed HOST:PORT (repeatable)", show_default=False)
]


SwarmKey = Annotated[Path | None, typer.Option(help="Swarm key file")]


Token = Annotated[str | None, typer.Option(help="Join token instead of a key file and seed")]


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


AdminKey = Annotated[
    str | None,
    typer.Option("--admin-key", help="The agent's admin key", envvar="HEXAMESH_ADMIN_KEY"),
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


CLIENT_SECRET_FILE_NAME = "client.secret"  # this user's job credential on an open API


def _job_credential(api_key: str | None, data_dir: Path | None) -> str:
    """Whose jobs these are: the API key, else this user's own secret
    (``<data-dir>/client.secret``, made once, mode 0600): on an open API a
    job belongs to the bearer token that submitted it."""
    if api_key:
        return api_key
    path = (data_dir or default_data_dir()) / CLIENT_SECRET_FILE_NAME
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another command made it meanwhile
            write_secret_file(path, secrets.token_urlsafe(24).encode())
    return path.read_text().strip()


def _operator(path: Path) -> Identity:
    """The operator key in ``path`` (``--operator-key``), or exit with why not."""
    try:
        return load_operator_key(path)
    except OperatorKeyError as e:
        raise _fail(str(e)) from None


def _post(url: str, path: str, body: dict[str, Any], key: str | None) -> dict[str, Any]:
    """POST ``body`` to the API at ``url`` with bearer ``key``: the answer,
    or exit with why not (an admin call's shape: one request, one answer)."""
    try:
        with _client(key) as client:
            return _check(client.post(f"{url}{path}", json=body))
    except httpx.HTTPError as e:
        raise _fail(f"cannot reach {url}: {e}") from None


OperatorKeyFile = Annotated[
    Path | None,
    typer.Option(
        "--operator-key",
        help="Sign it here with this operator key file \\[default: the agent called signs, "
        "with the operator key it keeps]",
        show_default=False,
    ),
]


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
