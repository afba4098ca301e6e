import stat
from pathlib import Path

from typer.testing import CliRunner

from hexamesh import __version__
from hexamesh.cli import app
from hexamesh.swarmkey import SWARM_KEY_FILE_NAME, JoinToken, load_key_file

runner = CliRunner()


def test_help_and_version() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("agent", "swarm", "version", "ping", "demo"):
        assert command in result.output
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_help_shows_the_defaults_written_in_help_texts() -> None:
    # "[default: 7420]" in a help string is rich markup unless escaped: it vanished.
    result = runner.invoke(app, ["agent", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "[default: 7420]" in result.output and "[default: 0.0.0.0]" in result.output
    result = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert "[default: never]" in result.output


def test_swarm_init_and_invite(tmp_path: Path) -> None:
    result = runner.invoke(app, ["swarm", "init", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    key = tmp_path / "swarm.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = runner.invoke(app, ["swarm", "init", "--data-dir", str(tmp_path)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    result = runner.invoke(app, ["swarm", "token", "10.1.2.3:7420", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    token = JoinToken.decode(result.output.strip())
    assert (token.host, token.port, token.key) == ("10.1.2.3", 7420, load_key_file(key).primary)


def test_agent_refuses_bad_input_with_clear_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["agent", "--port", "99999", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "port must be in 0..65535" in result.output
    result = runner.invoke(app, ["agent", "--join", "127.0.0.1:9", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "joining needs the swarm key" in result.output
    result = runner.invoke(app, ["agent", "--token", "hxm1.garbage", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "join token" in result.output


def test_agent_reports_a_taken_port_without_a_traceback(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = runner.invoke(
            app, ["agent", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path)]
        )
    assert result.exit_code == 2
    assert "cannot start the agent" in result.output and "Traceback" not in result.output
    assert f"UDP 127.0.0.1:{port}" in " ".join(result.output.split())  # which port
    assert not (tmp_path / SWARM_KEY_FILE_NAME).exists()  # no key of a swarm that never ran


def test_a_founder_writes_its_new_key_once_bound_not_before(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        api_port = taken.getsockname()[1]
        flags = ["--host", "127.0.0.1", "--port", "0", "--api-port", str(api_port)]
        result = runner.invoke(app, ["agent", *flags, "--data-dir", str(tmp_path)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"API 127.0.0.1:{api_port}" in said
    assert not (tmp_path / SWARM_KEY_FILE_NAME).exists()


def test_every_config_field_is_an_agent_option_and_nothing_else() -> None:
    import dataclasses

    from hexamesh.cli import agent_parameters
    from hexamesh.config import FLAGS, AgentConfig

    fields = {f.name for f in dataclasses.fields(AgentConfig)}
    assert set(FLAGS) == fields
    names = {p.name for p in agent_parameters()}
    assert names == {FLAGS[f].name or f for f in fields} | {"config"}
