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


def test_the_policy_section_from_file_environment_and_flags(tmp_path: Path) -> None:
    from hexamesh.policy import policy_of
    from hexamesh.serve.router import Priority

    file = tmp_path / "agent.toml"
    file.write_text(
        "[policy]\nweight-load = 0.6\nweight_proximity = 0.1\nclient_max_priority = 'medium'\n"
        "scale_add_load = 0.9\nscale_replicas = 2\njob_retention = 600\n"
    )
    cfg = load_config(file, env={"HEXAMESH_POLICY_LOW_MAX_LOAD": "0.3"})
    policy = policy_of(cfg)
    assert policy.routing.weight_load == 0.6 and policy.routing.weight_proximity == 0.1
    assert policy.routing.weight_match == 0.3  # the default where the file says nothing
    assert policy.routing.low_max_load == 0.3
    assert policy.priorities.client_max is Priority.MEDIUM
    assert policy.scale.add_load == 0.9 and policy.scale_replicas == 2
    assert policy.job_retention == cfg.job_retention == 600
    cfg = load_config(file, env={}, overrides={"policy_priority_scheduling": False})
    assert not policy_of(cfg).priorities.scheduling


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[policy]\nweight_load = -1\n", "weight_load must be at least 0"),
        ("[policy]\nsaturated = 1.5\n", "saturated must be in 0..1"),
        ("[policy]\ndefault_priority = 'urgent'\n", "default_priority must be high"),
        ("[policy]\nscale_drop_load = 0.9\n", "scale_drop_load must be below"),
        ("[policy]\nscale_replicas = 0\n", "scale_replicas must be in 1..8"),
        ("[policy]\nno_such = 1\n", "unknown key 'policy_no_such'"),
        ("[policy]\nweight_load = nan\n", "weight_load must be a finite number"),
        ("[policy]\njob_retention = inf\n", "job_retention must be a finite number"),
        ("policy = 3\n", "policy must be a table"),
        (
            "[policy]\nweight_load = 0\nweight_match = 0\nweight_proximity = 0\n",
            "sum to 0",
        ),
    ],
)
def test_a_bad_policy_is_refused_with_a_clear_error(
    tmp_path: Path, toml: str, message: str
) -> None:
    file = tmp_path / "agent.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(file, env={})
