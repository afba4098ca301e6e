"""`hexamesh version` and `hexamesh swarm`: the key, the join token."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hexamesh import __version__
from hexamesh.agent.rotate import handoff_body
from hexamesh.cli.common import (
    AdminKey,
    DataDir,
    OperatorKeyFile,
    PeerUrl,
    _api_url,
    _fail,
    _key_path,
    _operator,
    _post,
    app,
    console,
    err,
    swarm_app,
)
from hexamesh.config import default_data_dir
from hexamesh.net.base import parse_addr
from hexamesh.operator import (
    OPERATOR_KEY_FILE_NAME,
    OperatorKeyError,
    create_operator_key,
    encode_public,
    load_operator_key,
    trusted_operators,
)
from hexamesh.revocation import sign_revocation
from hexamesh.rotation import RETIRE_AFTER, USE_AFTER, sign_rotation
from hexamesh.swarmkey import (
    JoinToken,
    SwarmKeyError,
    create_key_file,
    load_key_file,
)
from hexamesh.wire import KEY_BYTES


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
    """Create a new swarm key (mode 0600), and an operator key beside it if
    there is none. Every member needs a copy of the swarm key; the operator
    key stays with the operator (its public half travels in invites)."""
    path = _key_path(data_dir, out)
    try:
        create_key_file(path)
    except SwarmKeyError as e:
        raise _fail(str(e)) from None
    console.print(f"wrote swarm key [bold]{path}[/] (mode 0600)")
    _operator_key(path.parent / OPERATOR_KEY_FILE_NAME)


@swarm_app.command("operator-key")
def swarm_operator_key(data_dir: DataDir = None) -> None:
    """Print the public operator key of <data-dir>/operator.key, creating the
    key (mode 0600) if there is none. Agents trust it with --trust-operator,
    or through invites from an agent whose data dir holds it."""
    _operator_key((data_dir or default_data_dir()) / OPERATOR_KEY_FILE_NAME)


def _operator_key(path: Path) -> None:
    try:
        key = load_operator_key(path) if path.exists() else create_operator_key(path)
    except OperatorKeyError as e:
        raise _fail(str(e)) from None
    err.print(f"operator key [bold]{path}[/] (mode 0600); its public key:")
    console.print(encode_public(key.public_key), soft_wrap=True)


@swarm_app.command("invite")
def swarm_invite(
    uses: Annotated[int, typer.Option(help="Nodes it may admit")] = 1,
    expires_in: Annotated[float, typer.Option(help="Seconds it stands")] = 3600.0,
    peer: PeerUrl = None,
    admin_key: AdminKey = None,
    data_dir: DataDir = None,
) -> None:
    """Print an invite (an admin call to the sponsoring agent): a token that
    admits --uses nodes through that agent until it expires, without carrying
    the swarm key (the joiner gets the key over an encrypted channel)."""
    url = _api_url(peer, data_dir)
    body = {"uses": uses, "expires_in": expires_in}
    doc = _post(url, "/swarm/invites", body, admin_key)
    expires = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc["expires"]))
    err.print(f"admits {doc['uses']} node(s) until {expires}:")
    console.print(doc["token"], soft_wrap=True)


@swarm_app.command("token")
def swarm_token(
    addr: Annotated[str, typer.Argument(help="HOST:PORT of a member that newcomers can reach")],
    data_dir: DataDir = None,
    key: Annotated[
        Path | None, typer.Option(help="Key file (default <data-dir>/swarm.key)")
    ] = None,
) -> None:
    """Print a join token that carries the swarm key itself (seed address,
    key, operators' public keys): no expiry, no count; prefer `swarm invite`."""
    try:
        ring = load_key_file(_key_path(data_dir, key))
        host, port = parse_addr(addr)
        operators = trusted_operators(data_dir or default_data_dir())
    except (SwarmKeyError, OperatorKeyError, ValueError) as e:
        raise _fail(str(e)) from None
    token = JoinToken(host, port, ring.primary, tuple(sorted(operators)))
    console.print(token.encode(), soft_wrap=True)


@swarm_app.command("revoke")
def swarm_revoke(
    node: Annotated[str, typer.Argument(help="Node id to revoke (40 hex digits)")],
    operator_key: OperatorKeyFile = None,
    peer: PeerUrl = None,
    admin_key: AdminKey = None,
    data_dir: DataDir = None,
) -> None:
    """Revoke a node (an admin call): every agent refuses its frames, forwards
    and records, and holds it dead. Rotate the swarm key too, or it can rejoin."""
    url = _api_url(peer, data_dir)
    body: dict[str, Any] = {"node": node}
    if operator_key is not None:
        try:
            raw = bytes.fromhex(node)
        except ValueError as e:
            raise _fail(f"a node id is hex: {e}") from None
        signed = sign_revocation(_operator(operator_key), raw, now=time.time())
        body = {"revocation": signed.to_json()}
    doc = _post(url, "/swarm/revocations", body, admin_key)
    said = "revoked" if doc.get("new") else "was revoked already"
    console.print(f"node {doc['node']} {said}; the swarm enforces it as it spreads")


@swarm_app.command("rotate")
def swarm_rotate(
    use_after: Annotated[
        float, typer.Option(help="Seconds until members seal with the new key")
    ] = USE_AFTER,
    retire_after: Annotated[
        float,
        typer.Option(
            help="Seconds until the old keys are dropped (members away till then need a new token)"
        ),
    ] = RETIRE_AFTER,
    operator_key: OperatorKeyFile = None,
    peer: PeerUrl = None,
    admin_key: AdminKey = None,
    data_dir: DataDir = None,
) -> None:
    """Roll the swarm key (an admin call): a new key goes to every live member
    that is not revoked over its encrypted channel; members seal with it after
    --use-after and drop the old ones after --retire-after."""
    url = _api_url(peer, data_dir)
    body: dict[str, Any] = {"use_after": use_after, "retire_after": retire_after}
    if operator_key is not None:
        new = secrets.token_bytes(KEY_BYTES)
        signed = sign_rotation(
            _operator(operator_key),
            new,
            now=time.time(),
            use_after=use_after,
            retire_after=retire_after,
        )
        body = handoff_body(new, signed)
    doc = _post(url, "/swarm/rotate", body, admin_key)
    console.print(
        f"new swarm key handed to {doc['told']} members; sealing with it from "
        f"{time.strftime('%H:%M:%S', time.localtime(doc['use_at']))}, old keys dropped at "
        f"{time.strftime('%H:%M:%S', time.localtime(doc['retire_at']))}"
    )
