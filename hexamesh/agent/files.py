"""The agent's files in its data dir: keys, incarnation, saved contacts; checked before it binds."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hexamesh.config import AgentConfig
from hexamesh.dht.core import DhtCore
from hexamesh.dht.service import save_contacts
from hexamesh.faults import Component, Faults
from hexamesh.fileio import DataDirLock, write_text_atomic
from hexamesh.identity import Identity
from hexamesh.invites import INVITE_PREFIX, InviteToken
from hexamesh.net.base import format_addr
from hexamesh.operator import (
    OPERATOR_KEY_FILE_NAME,
    load_operator_key,
    save_operators,
    trusted_operators,
)
from hexamesh.swarmkey import (
    JoinToken,
    SwarmKeyError,
    load_key_file,
    save_key_file,
)
from hexamesh.wire import KeyRing

log = logging.getLogger(__name__)

CONTACTS_FILE_NAME = "contacts.json"


JOBS_FILE_NAME = "jobs.sqlite"
BATCHES_FILE_NAME = "batches.sqlite"  # files and batches of the Batch API (serve.batches)
BLOBS_FILE_NAME = "blobs.sqlite"  # large job payloads, ours and others' (serve.blobs)


INCARNATION_FILE_NAME = "incarnation"  # our SWIM incarnation, kept across restarts


def resolve_keyring(config: AgentConfig) -> tuple[KeyRing, tuple[str, ...], bool]:
    """The swarm key ring, the seeds to join, and whether we found a new swarm.

    A join token supplies both key and seed; its key is saved to the key file
    if there is none (as Consul keeps ``-encrypt`` in its data dir), so a
    restart without the token stays in the swarm, and the CLI's commands that
    read the key file find it. With no seeds and no key file, this node founds
    a swarm with a new key, which the agent writes to the key file (mode 0600)
    once bound. With seeds but no key, it refuses: a node without the key can
    neither join nor read.
    """
    seeds = config.join
    path = config.swarm_key_path
    invite = _invite(config)
    if invite is not None:
        seeds = (*seeds, format_addr((invite.host, invite.port)))
        if path.exists():  # redeemed before: a restart joins with the key it got
            return load_key_file(path), seeds, False
        return KeyRing.generate(), seeds, False  # a stand-in until the invite is redeemed
    if config.token:
        token = JoinToken.decode(config.token)
        seeds = (*seeds, format_addr((token.host, token.port)))
        ring = KeyRing(token.key)
        save_operators(config.data_dir, token.operators)  # kept: a restart needs no token
        if not path.exists():
            save_key_file(path, ring)
            log.info("saved the token's swarm key to %s", path)
        elif _primary_in(path) != token.key:
            log.warning("%s holds another swarm key: left as it is, the token's is used", path)
        return ring, seeds, False
    if not path.exists() and not seeds:
        return KeyRing.generate(), seeds, True
    if not path.exists():
        raise SwarmKeyError(
            f"joining needs the swarm key: copy it to {path}, or pass --token from "
            "`hexamesh swarm invite` on a member"
        )
    return load_key_file(path), seeds, not seeds


def _invite(config: AgentConfig) -> InviteToken | None:
    """The invite the agent was given as its token, if the token is one."""
    if config.token and config.token.strip().startswith(INVITE_PREFIX):
        return InviteToken.decode(config.token)
    return None


def _primary_in(path: Path) -> bytes | None:
    """The primary key of a key file, None if it cannot be read."""
    try:
        return load_key_file(path).primary
    except SwarmKeyError:
        return None


@dataclass(frozen=True)
class PreparedAgent:
    """What an agent needs before it binds: checked early, outside any nursery."""

    config: AgentConfig
    identity: Identity
    keyring: KeyRing
    seeds: tuple[str, ...]
    founder: bool
    # A new swarm's key, written once the agent is bound (a start that fails
    # on a taken port leaves no key of a swarm that never ran).
    unsaved_key: Path | None = None
    lock: DataDirLock | None = None  # held on the data dir until run_agent returns
    operators: frozenset[bytes] = frozenset()  # operator keys whose orders we obey
    operator_key: Identity | None = None  # the operator's own, if kept on this machine
    # an invite to redeem before joining (the keyring is a stand-in until then)
    invite: InviteToken | None = None


def prepare_agent(config: AgentConfig) -> PreparedAgent:
    """Lock the data dir, load (or create) the node key and the swarm key;
    raises DataDirBusy, IdentityError or SwarmKeyError."""
    lock = DataDirLock(config.data_dir)  # and the data dir made its owner's only
    if lock.narrowed:
        log.warning("%s was open to other users: narrowed to mode 0700", config.data_dir)
    try:
        identity = Identity.load_or_create(config.data_dir)
        keyring, seeds, founder = resolve_keyring(config)
        operators = trusted_operators(config.data_dir, config.operator_keys)
        own = config.data_dir / OPERATOR_KEY_FILE_NAME
        operator_key = load_operator_key(own) if own.exists() else None
    except BaseException:
        lock.release()
        raise
    path = config.swarm_key_path
    unsaved = path if founder and not path.exists() else None  # a new swarm's key
    invite = _invite(config) if not path.exists() else None  # else redeemed before
    return PreparedAgent(
        config, identity, keyring, seeds, founder, unsaved, lock, operators, operator_key, invite
    )


def load_incarnation(path: Path) -> int:
    """Our SWIM incarnation when we last ran (0 if unknown)."""
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):
        return 0
    return max(0, value)


def _keep_incarnation(path: Path, incarnation: int, faults: Faults) -> None:
    try:
        write_text_atomic(path, f"{incarnation}\n")
    except OSError as e:
        faults.caught(Component.STATUS, e, f"writing {path.name}")


def _save_contacts(path: Path, dht_core: DhtCore, faults: Faults) -> None:
    try:
        save_contacts(path, dht_core.closest(dht_core.me.id, 200))
    except OSError as e:
        faults.caught(Component.STATUS, e, f"writing {path.name}")
