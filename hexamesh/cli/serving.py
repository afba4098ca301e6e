"""`hexamesh submit`, `models`, `jobs` and `place`: the swarm's API from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from hexamesh.cli.common import (
    AdminKey,
    ApiKey,
    DataDir,
    OperatorKeyFile,
    PeerUrl,
    _api_url,
    _check,
    _client,
    _fail,
    _job_credential,
    _operator,
    _post,
    app,
    console,
    err,
    jobs_app,
)
from hexamesh.placement.order import order_to_json, sign_order


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
    prompt: Annotated[str | None, typer.Argument(help="The prompt (or --file)")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="A JSONL file of requests, run as one batch (OpenAI Batch API): OpenAI batch"
            " lines, or lines with a `prompt` or `messages`; prints one JSON answer per line",
        ),
    ] = None,
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
    """Queue a job; prints its id. With --file: run a batch and print its answers."""
    url = _api_url(peer, data_dir)
    if (prompt is None) == (file is None):
        raise _fail("give a prompt or --file, not both")
    try:
        with _client(_job_credential(api_key, data_dir)) as client:
            if file is not None:
                _run_batch(client, url, file, model, max_tokens)
                return
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


def batch_lines(text: str, model: str, max_tokens: int) -> tuple[str, bytes]:
    """A batch's input file from ``text``: OpenAI batch lines as they are,
    lines with a ``prompt`` or ``messages`` made into requests (``line-<n>``);
    returns its endpoint and content."""
    rows, endpoints = [], set()
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            raise _fail(f"line {n} is not JSON") from None
        if not isinstance(line, dict):
            raise _fail(f"line {n} is not a JSON object")
        if "custom_id" not in line:
            chat = "messages" in line
            body = {"model": model, "max_tokens": max_tokens} | line
            url = "/v1/chat/completions" if chat else "/v1/completions"
            line = {"custom_id": f"line-{n}", "method": "POST", "url": url, "body": body}
        endpoints.add(line.get("url"))
        rows.append(json.dumps(line))
    if len(endpoints) != 1:
        raise _fail("a batch's lines all go to one endpoint (chat or completions, not both)")
    return str(endpoints.pop()), ("\n".join(rows) + "\n").encode()


def _run_batch(
    client: httpx.Client, url: str, path: Path, model: str | None, max_tokens: int
) -> None:
    endpoint, data = batch_lines(path.read_text(), model or _first_model(client, url), max_tokens)
    files = {"file": (path.name, data, "application/jsonl")}
    uploaded = _check(client.post(f"{url}/files", files=files, data={"purpose": "batch"}))
    batch = _check(
        client.post(f"{url}/batches", json={"input_file_id": uploaded["id"], "endpoint": endpoint})
    )
    err.print(f"batch {batch['id']}: {batch['status']}")
    while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(1.0)
        batch = _check(client.get(f"{url}/batches/{batch['id']}"))
    counts = batch.get("request_counts") or {}
    err.print(f"batch {batch['id']}: {batch['status']} {counts}")
    for field in ("output_file_id", "error_file_id"):
        if batch.get(field):
            r = client.get(f"{url}/files/{batch[field]}/content")
            if r.status_code >= 400:
                _check(r)
            for raw in r.text.splitlines():
                row = json.loads(raw)
                body = (row.get("response") or {}).get("body")
                answer = {"custom_id": row["custom_id"]}
                if row.get("error"):
                    answer["error"] = (row["error"] or {}).get("message")
                else:
                    answer["text"] = answer_text(body)
                print(json.dumps(answer))
    if batch["status"] == "failed":
        raise _fail(f"batch failed: {json.dumps(batch.get('errors'))}")


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
        with _client(_job_credential(api_key, data_dir)) as client:
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
        with _client(_job_credential(api_key, data_dir)) as client:
            while True:
                r = client.get(f"{url}/jobs/{job_id}")
                if r.status_code == 503 and time.monotonic() < deadline:
                    time.sleep(0.5)  # done, its result's holders not reachable this moment
                    continue
                doc = _check(r)
                status = doc.get("status")
                if status == "done":
                    print(answer_text(doc.get("result")))
                    return
                if status in ("failed", "cancelled"):
                    raise _fail(f"job {job_id} {status}: {doc.get('error')}")
                if time.monotonic() > deadline:
                    raise _fail(f"job {job_id} still {status} after {timeout:.0f} s")
                time.sleep(0.5)
    except httpx.HTTPError as e:
        raise _fail(f"cannot reach {url}: {e}") from None


def answer_text(result: object) -> str:
    """The text of a completion or chat answer (a job's result, a batch line's
    body); an answer of another shape is printed as JSON."""
    try:
        choice = result["choices"][0]  # type: ignore[index]
        text = choice.get("text") or (choice.get("message") or {}).get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        text = None
    return text if isinstance(text, str) else json.dumps(result)


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
    operator_key: OperatorKeyFile = None,
    peer: PeerUrl = None,
    admin_key: AdminKey = None,
    data_dir: DataDir = None,
) -> None:
    """Call a placement vote (an admin call): the scouts near the peer elect
    agents that take placements to load the model. No quorum by the deadline:
    nothing moves (exit code 1)."""
    url = _api_url(peer, data_dir)
    body: dict[str, Any] = {"model": model, "source": source or model, "replicas": replicas}
    if ttl is not None:
        body["ttl"] = ttl
    if operator_key is not None:
        signed = sign_order(_operator(operator_key), model, source or model, now=time.time())
        body["order"] = order_to_json(signed)
    doc = _post(url, "/placements", body, admin_key)
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
