from pathlib import Path

import pytest

from hexamesh.config import DEFAULT_PORT, AgentConfig, ConfigError, load_config


def test_defaults() -> None:
    cfg = load_config(env={})
    assert cfg.port == DEFAULT_PORT
    assert cfg.join == ()
    assert cfg.swarm_key_path == cfg.data_dir / "swarm.key"


def test_layers_file_then_env_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "agent.toml"
    file.write_text('port = 1111\nhost = "10.0.0.1"\njoin = ["a:1"]\nlog-level = "DEBUG"\n')
    cfg = load_config(file, env={})
    assert (cfg.port, cfg.host, cfg.join, cfg.log_level) == (1111, "10.0.0.1", ("a:1",), "DEBUG")
    env = {"HEXAMESH_PORT": "2222", "HEXAMESH_JOIN": "b:2, c:3"}
    cfg = load_config(file, env=env)
    assert (cfg.port, cfg.host, cfg.join) == (2222, "10.0.0.1", ("b:2", "c:3"))
    cfg = load_config(file, env=env, overrides={"port": 0, "host": None})
    assert (cfg.port, cfg.host) == (0, "10.0.0.1")


@pytest.mark.parametrize(
    ("toml", "env", "on"),
    [
        ("", {}, False),
        ("swarmscale = true\n", {}, True),
        ("swarmscale = true\n", {"HEXAMESH_SWARMSCALE": "off"}, False),
        ("", {"HEXAMESH_SWARMSCALE": "Yes"}, True),
        ("", {"HEXAMESH_SWARMSCALE": "0"}, False),
    ],
)
def test_booleans_from_file_and_environment(
    tmp_path: Path, toml: str, env: dict[str, str], on: bool
) -> None:
    file = tmp_path / "agent.toml"
    file.write_text(toml)
    assert load_config(file, env=env).swarmscale is on


def test_a_gpu_share_from_file_environment_or_flag(tmp_path: Path) -> None:
    file = tmp_path / "agent.toml"
    file.write_text("gpu-share = 0.5\n")  # a TOML float
    assert load_config(file, env={}).gpu_share == 0.5
    file.write_text("gpu-share = 1\n")  # a TOML integer is a float here too
    assert load_config(file, env={}).gpu_share == 1.0
    assert load_config(file, env={"HEXAMESH_GPU_SHARE": "0.25"}).gpu_share == 0.25
    assert load_config(file, env={}, overrides={"gpu_share": 0.4}).gpu_share == 0.4


def test_config_file_from_environment(tmp_path: Path) -> None:
    file = tmp_path / "agent.toml"
    file.write_text(f'data_dir = "{tmp_path}/d"\n')
    assert load_config(env={"HEXAMESH_CONFIG": str(file)}).data_dir == tmp_path / "d"


@pytest.mark.parametrize(
    ("toml", "env", "error"),
    [
        ("bogus = 1\n", {}, "unknown key 'bogus'"),
        ("port = 'x'\n", {}, "port='x' is not valid"),
        ("port = true\n", {}, "not a boolean"),
        ("port = 70000\n", {}, "port must be in 0..65535"),
        ("join = ['nohost']\n", {}, "join: address 'nohost' has no port"),
        ("port = [\n", {}, "agent.toml"),
        ("", {"HEXAMESH_PORT": "eighty"}, r"\$HEXAMESH_PORT: port='eighty'"),
        ("", {"HEXAMESH_LOG_LEVEL": "loud"}, "log_level"),
        ("", {"HEXAMESH_SWARMSCALE": "maybe"}, "true or false"),
        ("max-models = -1\n", {}, "max_models must be at least 0"),
        ("gpu-share = 0\n", {}, r"gpu_share must be in \(0, 1\]"),
        ("", {"HEXAMESH_GPU_SHARE": "1.5"}, r"gpu_share must be in \(0, 1\]"),
        ("", {"HEXAMESH_GPU_SHARE": "half"}, "gpu_share='half' is not valid"),
        ("gpu-share = true\n", {}, "not a boolean"),
    ],
)
def test_bad_configuration_is_reported_with_its_source(
    tmp_path: Path, toml: str, env: dict[str, str], error: str
) -> None:
    file = tmp_path / "agent.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError, match=error):
        load_config(file, env=env)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(Path("/nonexistent/agent.toml"), env={})


def test_config_is_frozen() -> None:
    cfg = AgentConfig()
    with pytest.raises(AttributeError):
        cfg.port = 1
