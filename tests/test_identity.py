import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hexamesh.identity import KEY_FILE_NAME, Identity, IdentityError, node_id_for, verify

ALICE = Identity.from_private_bytes(bytes(range(32)))


def test_node_id_is_160_bit_blake2b_of_the_public_key() -> None:
    assert len(ALICE.node_id) == 20
    assert ALICE.node_id == hashlib.blake2b(ALICE.public_key, digest_size=20).digest()
    assert node_id_for(ALICE.public_key) == ALICE.node_id


def test_key_file_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    first = Identity.load_or_create(tmp_path / "d")
    path = tmp_path / "d" / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Identity.load_or_create(tmp_path / "d")
    assert again.node_id == first.node_id


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o640])
def test_refuses_a_key_readable_by_others(tmp_path: Path, mode: int) -> None:
    Identity.load_or_create(tmp_path)
    os.chmod(tmp_path / KEY_FILE_NAME, mode)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load_or_create(tmp_path)


def test_refuses_a_corrupt_key(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="32 bytes"):
        Identity.load_or_create(tmp_path)


@settings(max_examples=50)
@given(st.binary(max_size=300))
def test_sign_verify_and_tampering(data: bytes) -> None:
    sig = ALICE.sign(data)
    assert verify(ALICE.public_key, sig, data)
    assert not verify(ALICE.public_key, sig, data + b"x")
    bob = Identity.from_private_bytes(bytes([7]) * 32)
    assert not verify(bob.public_key, sig, data)


@pytest.mark.parametrize(
    ("public", "sig"),
    [(b"", bytes(64)), (bytes(32), b""), (bytes(31), bytes(64)), (bytes(32), bytes(64))],
)
def test_verify_never_raises_on_garbage(public: bytes, sig: bytes) -> None:
    assert verify(public, sig, b"data") is False
