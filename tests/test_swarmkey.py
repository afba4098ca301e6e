import os
import stat
from pathlib import Path

import pytest

from hexamesh.swarmkey import JoinToken, SwarmKeyError, create_key_file, load_key_file
from hexamesh.wire import KeyRing


def test_create_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "swarm.key"
    ring = create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path).keys == ring.keys
    with pytest.raises(SwarmKeyError, match="refusing to overwrite"):
        create_key_file(path)


def test_rotation_file_primary_first(tmp_path: Path) -> None:
    path = tmp_path / "swarm.key"
    old = create_key_file(path)
    new = KeyRing.generate()
    from hexamesh.swarmkey import _b64

    path.write_text(f"# rotating\n{_b64(new.primary)}\n\n{_b64(old.primary)}\n")
    ring = load_key_file(path)
    assert ring.keys == (new.primary, old.primary)


@pytest.mark.parametrize(
    ("text", "error"),
    [("", "holds no key"), ("abc\n", "32 bytes"), ("!!!!\n", "base64")],
)
def test_bad_key_files(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "swarm.key"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(SwarmKeyError, match=error):
        load_key_file(path)


def test_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "swarm.key"
    create_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(SwarmKeyError, match="chmod 600"):
        load_key_file(path)


def test_missing_key_file_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(SwarmKeyError, match="swarm invite"):
        load_key_file(tmp_path / "nope")


def test_join_token_round_trip_and_corruption() -> None:
    token = JoinToken("10.0.0.7", 7420, bytes(range(32)))
    text = token.encode()
    assert text.startswith("hxm1.")
    assert JoinToken.decode(text) == token
    for bad in ("nope", "hxm1.", "hxm1.AAAA", text[:-6]):
        with pytest.raises(SwarmKeyError):
            JoinToken.decode(bad)
