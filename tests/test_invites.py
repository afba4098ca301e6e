"""Invites (issue 31): a token that admits a counted number of nodes through
one sponsor until it expires, and carries no swarm key; the joiner gets the
key ring over the peer channel's handshake, keyed by the invite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from hexamesh.agent import STATUS_FILE_NAME, AgentStatus, run_agent
from hexamesh.config import AgentConfig
from hexamesh.invites import InviteBook, InviteError, InviteToken
from hexamesh.limits import MAX_INVITES
from hexamesh.operator import (
    OPERATOR_KEY_FILE_NAME,
    OPERATORS_FILE_NAME,
    create_operator_key,
    encode_public,
)
from hexamesh.swarmkey import load_key_file
from tests.helpers import run_hexamesh


def test_an_invite_admits_its_count_until_it_expires_and_is_kept(tmp_path: Path) -> None:
    book = InviteBook(tmp_path)
    secret, expires = book.create(uses=2, expires_in=60, now=1000.0)
    assert expires == 1060 and book.secrets(1000.0) == (secret,)
    assert book.use(secret, 1001.0)
    again = InviteBook(tmp_path)  # a restart
    assert (tmp_path / "invites.json").stat().st_mode & 0o777 == 0o600
    assert again.use(secret, 1002.0) and not again.use(secret, 1003.0)  # two uses
    assert again.secrets(1003.0) == ()
    late, _ = again.create(uses=5, expires_in=10, now=1000.0)
    assert not again.use(late, 1010.0) and again.secrets(1010.0) == ()  # expired
    for _ in range(MAX_INVITES):
        again.create(uses=1, expires_in=60, now=2000.0)
    with pytest.raises(InviteError, match="open already"):
        again.create(uses=1, expires_in=60, now=2000.0)


def test_a_token_carries_no_key_and_a_corrupted_one_is_refused() -> None:
    token = InviteToken("10.0.0.1", 7420, b"\x01" * 20, b"\x02" * 32, 1060)
    assert InviteToken.decode(token.encode()) == token
    for bad in ("hxm1.abc", "hxi1.!!!", "hxi1." + token.encode()[5:-4]):
        with pytest.raises(InviteError):
            InviteToken.decode(bad)


async def test_a_node_joins_with_an_invite_once_and_not_twice(tmp_path: Path) -> None:
    operator = create_operator_key(tmp_path / "a" / OPERATOR_KEY_FILE_NAME)
    async with trio.open_nursery() as nursery:
        cfg = AgentConfig(
            data_dir=tmp_path / "a", host="127.0.0.1", port=0, api_port=0, admin_keys=("admin",)
        )
        sponsor: AgentStatus = await nursery.start(
            lambda task_status: run_agent(cfg, task_status=task_status)
        )
        made = await trio.to_thread.run_sync(
            lambda: run_hexamesh(
                "swarm", "invite", "--uses", "1", "--expires-in", "60", "--peer", str(sponsor.api),
                env={"HEXAMESH_ADMIN_KEY": "admin"},
            )
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        ring = load_key_file(tmp_path / "a" / "swarm.key")
        assert (
            token.startswith("hxi1.")
            and ring.primary not in InviteToken.decode(token).encode().encode()
        )

        def joiner(name: str) -> AgentConfig:
            return AgentConfig(
                data_dir=tmp_path / name, host="127.0.0.1", port=0, api_port=0, token=token
            )

        joined: AgentStatus = await nursery.start(
            lambda task_status: run_agent(joiner("b"), task_status=task_status)
        )
        assert load_key_file(tmp_path / "b" / "swarm.key").keys == ring.keys
        trusted = (tmp_path / "b" / OPERATORS_FILE_NAME).read_text().split()
        assert trusted == [encode_public(operator.public_key)]
        with trio.fail_after(30):
            while joined.node_id not in json.loads(
                (tmp_path / "a" / STATUS_FILE_NAME).read_text()
            ).get("alive", []):
                await trio.sleep(0.1)
        # the invite admitted one node: the second holder is refused at the handshake
        refused: list[str] = []
        try:
            async with trio.open_nursery() as inner:
                await inner.start(
                    lambda task_status: run_agent(joiner("c"), task_status=task_status)
                )
        except* InviteError as group:
            refused = [str(e) for e in group.exceptions]
        assert len(refused) == 1 and "did not take the invite" in refused[0]
        assert not (tmp_path / "c" / "swarm.key").exists()
        nursery.cancel_scope.cancel()
