"""Swarm key rotation (issue 31): install, use, retire, each on time; only an
operator's rotation of the key it names is taken; a restart between the
steps finishes them."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from hexamesh.rotation import ROTATION_FILE_NAME, RotationError, Rotations, sign_rotation
from hexamesh.swarmkey import load_key_file, save_key_file
from hexamesh.wire import KEY_BYTES, KeyRing
from tests.helpers import identity
from tests.placement.helpers import OPERATOR, OPERATORS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rotations(tmp_path: Path, ring: KeyRing, clock: Clock) -> Rotations:
    return Rotations(
        ring,
        key_file=tmp_path / "swarm.key",
        data_dir=tmp_path,
        operators=OPERATORS,
        clock=clock,
    )


def test_a_rotation_installs_then_uses_then_retires_on_time(tmp_path: Path) -> None:
    old = KeyRing.generate()
    save_key_file(tmp_path / "swarm.key", old)
    first = old.primary
    clock = Clock()
    mine = rotations(tmp_path, old, clock)
    new = secrets.token_bytes(KEY_BYTES)
    rotation = sign_rotation(OPERATOR, new, now=clock.now, use_after=10, retire_after=60)
    assert mine.take(new, rotation) and not mine.take(new, rotation)
    assert old.keys == (first, new)  # opens with both, seals with the old one
    assert load_key_file(tmp_path / "swarm.key").keys == (first, new)  # kept
    assert mine.next_at() == rotation.use_at
    clock.now = rotation.use_at
    mine.step()
    assert old.keys == (new, first)  # seals with the new one, still opens the old
    assert mine.next_at() == rotation.retire_at
    clock.now = rotation.retire_at
    mine.step()
    assert list(old.keys) == [new] and mine.next_at() is None
    assert load_key_file(tmp_path / "swarm.key").keys == (new,)
    assert not (tmp_path / ROTATION_FILE_NAME).exists()


def test_only_an_operators_rotation_of_the_key_it_names_is_taken(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    save_key_file(tmp_path / "swarm.key", ring)
    mine = rotations(tmp_path, ring, Clock())
    new = secrets.token_bytes(KEY_BYTES)
    forged = sign_rotation(identity(9), new, now=1000.0)  # a key holder's own
    with pytest.raises(RotationError, match="not one of our operators"):
        mine.take(new, forged)
    real = sign_rotation(OPERATOR, new, now=1000.0)
    with pytest.raises(RotationError, match="not the one"):
        mine.take(secrets.token_bytes(KEY_BYTES), real)  # its signature, another key
    assert len(ring.keys) == 1


def test_a_restart_between_the_steps_finishes_them(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    save_key_file(tmp_path / "swarm.key", ring)
    clock = Clock()
    new = secrets.token_bytes(KEY_BYTES)
    rotation = sign_rotation(OPERATOR, new, now=clock.now, use_after=10, retire_after=60)
    rotations(tmp_path, ring, clock).take(new, rotation)
    again = load_key_file(tmp_path / "swarm.key")  # the agent restarts
    restarted = rotations(tmp_path, again, clock)
    assert restarted.next_at() == rotation.use_at
    clock.now = rotation.retire_at + 1
    restarted.step()
    assert again.keys == (new,)
