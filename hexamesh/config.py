"""Agent configuration: one frozen dataclass, filled from four layers.

Precedence, lowest to highest: the defaults below, a TOML file (``--config``
or ``HEXAMESH_CONFIG``), ``HEXAMESH_*`` environment variables, command-line
flags. Every field has the same name in all layers (TOML key ``port``, variable
``HEXAMESH_PORT``, flag ``--port``); list fields are comma-separated in the
environment. Unknown keys and bad values fail with a message naming the layer.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hexamesh.engine.device import GPU_SHARE
from hexamesh.net.base import parse_addr
from hexamesh.operator import OperatorKeyError, decode_public

__all__ = [
    "DEFAULT_API_PORT",
    "DEFAULT_PORT",
    "FLAGS",
    "AgentConfig",
    "ConfigError",
    "default_data_dir",
    "load_config",
]

DEFAULT_PORT = 7420  # UDP and TCP; unassigned by IANA, clear of memberlist's 7946
DEFAULT_API_PORT = 7421  # the OpenAI-compatible API, next to the peer port
ENV_PREFIX = "HEXAMESH_"


class ConfigError(Exception):
    """A configuration value or file is wrong; the message says which and where."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hexamesh"


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)  # keys, state
    host: str = "0.0.0.0"  # bind address for peer UDP+TCP; all interfaces by default
    port: int = DEFAULT_PORT  # peer UDP+TCP port; 0 = any free port
    advertise: str | None = None  # host peers should dial, if not the bound one
    join: tuple[str, ...] = ()  # seeds, HOST:PORT each; none = found a new swarm
    swarm_key: Path | None = None  # key file; default <data_dir>/swarm.key
    token: str | None = None  # an invite (`swarm invite`) or a key-bearing token (`swarm token`)
    # Secrets from files (mode 0600 or tighter), kept off the command line where
    # every local user reads them (ps, /proc): the token, then one key per line.
    token_file: Path | None = None
    api_key_file: Path | None = None
    admin_key_file: Path | None = None
    metrics_key_file: Path | None = None
    log_level: str = "INFO"
    model: tuple[str, ...] = ()  # models to serve: DIR, hub id, or NAME=DIR|ID each
    kv_cache_gb: int = 1  # CPU only: KV-cache space per model (VLLM_CPU_KVCACHE_SPACE)
    # GPU only: of the GPU's memory, what this agent's vLLM servers take together,
    # split equally over max_models. Lower where agents share one GPU.
    gpu_share: float = GPU_SHARE
    max_model_len: int = 1024  # tokens of context per request
    # The OpenAI-compatible server run for each model, as ``python -m <module>``:
    # vLLM's. Tests and `hexamesh chaos --fake-engine` name a stand-in.
    engine_module: str = "vllm.entrypoints.openai.api_server"
    api_host: str = "127.0.0.1"  # the OpenAI API's bind address; loopback unless told
    api_port: int = DEFAULT_API_PORT  # the OpenAI API's TCP port; 0 = any free port
    api_keys: tuple[str, ...] = ()  # bearer keys clients must show; none = no client auth
    # Bearer keys of operators: placements (and the other admin calls) need
    # one; none = this agent takes no admin calls. Distinct from api_keys.
    admin_keys: tuple[str, ...] = ()
    # Bearer keys /metrics needs (an admin key too); none = /metrics is open,
    # as Prometheus scrapes usually are on a private network.
    metrics_keys: tuple[str, ...] = ()
    # Operator public keys (base64url) whose placement orders this agent obeys,
    # beside <data_dir>/operators and <data_dir>/operator.key (hexamesh.operator).
    operator_keys: tuple[str, ...] = ()
    max_jobs: int = 256  # jobs queued or running on this agent; more are refused (429)
    job_retention: float = 86400.0  # s a finished job (done or failed) is kept, then deleted
    # Models this agent serves at most, its --model ones included. With
    # accept_placements and below that, it dances "up" and a placement vote may
    # give it a replica to load; else "full".
    max_models: int = 1
    # Load models that a placement vote gives this agent. Off by default: a
    # vote starts an engine on this machine, and its operator says whether
    # others may (with placement_sources saying what it may load).
    accept_placements: bool = False
    # What a placement may load here: shell patterns (fnmatch) of directories
    # or hub ids, e.g. "/models/*" or "Qwen/*". None: no placement loads here.
    placement_sources: tuple[str, ...] = ()
    # A placement of a hub id may download it. Off: HF_HUB_OFFLINE=1 for
    # placed models (an agent's own --model hub ids download as vLLM would).
    hub_downloads: bool = False
    # Call placement votes when the models served here run hot, unload voted-in
    # replicas when they run cold (placement/swarmscale.py). Off by default: it
    # starts engines on other machines of the swarm without anyone asking.
    swarmscale: bool = False
    # Extra arguments for every vLLM server this agent starts, as they are
    # (e.g. "--max-num-seqs=64"); the agent's own flags come first.
    engine_args: tuple[str, ...] = ()

    # -- policy: the [policy] section of the TOML file (policy_<key> here,
    # HEXAMESH_POLICY_<KEY> in the environment, --policy-<key> as a flag) ----
    # The router's score: weights of load, model match, proximity, and of a
    # server that served the request's prefix lately (docs/serving.md).
    policy_weight_load: float = 0.4
    policy_weight_match: float = 0.3
    policy_weight_proximity: float = 0.3
    policy_weight_affinity: float = 0.4
    policy_saturated: float = 0.95  # load at which a server goes behind the others
    policy_stability_weight: float = 0.1  # high priority: bonus per hour of uptime (max 1 h)
    policy_low_max_load: float = 0.5  # low priority goes to servers at or below this load
    policy_default_priority: str = "medium"  # a request that asks for none
    policy_client_max_priority: str = "high"  # the highest a client may ask (admins: any)
    # Of each engine's batch slots, the share low-priority requests leave free
    # for high and medium ones (vLLM preempts for memory, not for a slot).
    policy_low_reserve: float = 0.25
    # Engines schedule by priority (vLLM --scheduling-policy priority) and get
    # each request's; off: first come, first served, as vLLM's default.
    policy_priority_scheduling: bool = True
    # Swarmscale (with --swarmscale): hot above this mean load, or this many
    # requests waiting, or this time to first token, for 10 s: a vote for
    # policy_scale_replicas more; cold below this load and queue for
    # policy_scale_drop_after s: a voted-in replica goes.
    policy_scale_add_load: float = 0.8
    policy_scale_add_queue: int = 100
    policy_scale_add_ttft: float = 5.0
    policy_scale_drop_load: float = 0.2
    policy_scale_drop_queue: int = 10
    policy_scale_drop_after: float = 300.0
    policy_scale_replicas: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if not 0 <= self.api_port < 65536:
            raise ConfigError(f"api_port must be in 0..65535, got {self.api_port}")
        if self.max_models < 0:
            raise ConfigError(f"max_models must be at least 0, got {self.max_models}")
        if self.max_jobs < 1:
            raise ConfigError(f"max_jobs must be at least 1, got {self.max_jobs}")
        if not self.job_retention > 0:
            raise ConfigError(f"job_retention must be above 0 s, got {self.job_retention}")
        for seed in self.join:
            try:
                parse_addr(seed)
            except ValueError as e:
                raise ConfigError(f"join: {e}") from None
        for key in self.operator_keys:
            try:
                decode_public(key)
            except OperatorKeyError as e:
                raise ConfigError(f"operator_keys: {e}") from None
        if self.kv_cache_gb < 1:
            raise ConfigError(f"kv_cache_gb must be at least 1, got {self.kv_cache_gb}")
        if not 0.0 < self.gpu_share <= 1.0:
            raise ConfigError(f"gpu_share must be in (0, 1], got {self.gpu_share}")
        if self.max_model_len < 16:
            raise ConfigError(f"max_model_len must be at least 16, got {self.max_model_len}")
        self._check_policy()
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(
                f"log_level must be DEBUG, INFO, WARNING or ERROR, not {self.log_level!r}"
            )

    def _check_policy(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            policy = field.name.startswith("policy_") and isinstance(value, float)
            if policy and not math.isfinite(value):
                raise ConfigError(f"policy.{field.name[7:]} must be a finite number")
        if not math.isfinite(self.job_retention):
            raise ConfigError("job_retention must be a finite number of seconds")
        weights = ("load", "match", "proximity", "affinity")
        for name in weights:
            if getattr(self, f"policy_weight_{name}") < 0:
                raise ConfigError(f"policy.weight_{name} must be at least 0")
        if self.policy_weight_load + self.policy_weight_match + self.policy_weight_proximity <= 0:
            raise ConfigError("policy: the weights of load, match and proximity sum to 0")
        if not 0.0 <= self.policy_low_reserve < 1.0:
            raise ConfigError("policy.low_reserve must be in 0..1 (1 would shut low out)")
        for name in ("saturated", "low_max_load", "scale_add_load", "scale_drop_load"):
            if not 0.0 <= getattr(self, f"policy_{name}") <= 1.0:
                raise ConfigError(f"policy.{name} must be in 0..1, a load")
        if self.policy_stability_weight < 0:
            raise ConfigError("policy.stability_weight must be at least 0")
        for name in ("default_priority", "client_max_priority"):
            if getattr(self, f"policy_{name}") not in ("high", "medium", "low"):
                raise ConfigError(f"policy.{name} must be high, medium or low")
        if self.policy_scale_drop_load >= self.policy_scale_add_load:
            raise ConfigError("policy.scale_drop_load must be below policy.scale_add_load")
        if self.policy_scale_drop_queue >= self.policy_scale_add_queue:
            raise ConfigError("policy.scale_drop_queue must be below policy.scale_add_queue")
        if self.policy_scale_add_ttft <= 0 or self.policy_scale_drop_after <= 0:
            raise ConfigError("policy.scale_add_ttft and scale_drop_after must be above 0 s")
        if not 1 <= self.policy_scale_replicas <= 8:
            raise ConfigError("policy.scale_replicas must be in 1..8")

    def placement_room(self, held: int) -> int:
        """Models a placement vote may still give us while we hold ``held``."""
        return max(self.max_models - held, 0) if self.accept_placements else 0

    @property
    def swarm_key_path(self) -> Path:
        return self.swarm_key if self.swarm_key is not None else self.data_dir / "swarm.key"


@dataclass(frozen=True)
class Flag:
    """How an ``AgentConfig`` field is offered on the command line."""

    help: str
    name: str | None = None  # the flag's name, if not the field's (``--api-key``)
    hidden: bool = False


# The `hexamesh agent` options, one per field, generated from this table and
# the fields' types and defaults (cli.agent_parameters): a field without a
# flag here fails a test.
FLAGS: dict[str, Flag] = {
    "data_dir": Flag("Data dir: keys, state, jobs"),
    "host": Flag("Bind address of the peer port"),
    "port": Flag("Peer UDP+TCP port, 0 = any free"),
    "advertise": Flag("IP address peers should dial (else learned from them)"),
    "join": Flag("Seed HOST:PORT to join (repeatable)"),
    "swarm_key": Flag("Swarm key file"),
    "token": Flag(
        "Invite from `hexamesh swarm invite` or token from `swarm token` "
        "(visible in ps: prefer --token-file)"
    ),
    "token_file": Flag("File holding the join token (mode 0600)"),
    "api_key_file": Flag("File of client API keys, one per line (mode 0600)"),
    "admin_key_file": Flag("File of admin keys, one per line (mode 0600)"),
    "metrics_key_file": Flag("File of /metrics keys, one per line (mode 0600)"),
    "metrics_keys": Flag("Bearer key /metrics needs (repeatable)", name="metrics_key"),
    "log_level": Flag("DEBUG, INFO, WARNING or ERROR"),
    "model": Flag("Serve a model with vLLM: DIR, hub id, or NAME=DIR (repeatable)"),
    "kv_cache_gb": Flag("CPU: KV-cache GiB per model"),
    "gpu_share": Flag(
        "GPU: share of the GPU's memory this agent's models take together, "
        "lower where agents share a GPU"
    ),
    "max_model_len": Flag("Context tokens per request"),
    "engine_module": Flag("Server module run per model with python -m", hidden=True),
    "api_host": Flag("OpenAI API bind address"),
    "api_port": Flag("OpenAI API port, 0 = any free"),
    "api_keys": Flag(
        "Bearer key clients must show (repeatable; visible in ps: prefer --api-key-file)",
        name="api_key",
    ),
    "admin_keys": Flag(
        "Bearer key of operators, for placements and other admin calls (repeatable)",
        name="admin_key",
    ),
    "operator_keys": Flag(
        "Operator public key whose placement orders this agent obeys (repeatable)",
        name="trust_operator",
    ),
    "max_jobs": Flag("Jobs queued here before 429"),
    "job_retention": Flag("Seconds a finished job is kept, then deleted"),
    "max_models": Flag(
        "Models served here at most, --model ones included; with --accept-placements "
        "and below it a placement vote may give this agent one"
    ),
    "accept_placements": Flag("Load models that placement votes give this agent"),
    "placement_sources": Flag(
        "What a placement may load here: a pattern of directories or hub ids (repeatable)",
        name="placement_source",
    ),
    "hub_downloads": Flag("A placed hub id may be downloaded (else HF_HUB_OFFLINE=1)"),
    "swarmscale": Flag(
        "Call placement votes when models here run hot; drop voted-in replicas when cold"
    ),
    "engine_args": Flag(
        "Extra argument for every vLLM server, as --engine-arg=--max-num-seqs=64 (repeatable)",
        name="engine_arg",
    ),
    "policy_weight_load": Flag("Policy: routing weight of a server's load"),
    "policy_weight_match": Flag("Policy: routing weight of a fresh model match"),
    "policy_weight_proximity": Flag("Policy: routing weight of proximity in the comb"),
    "policy_weight_affinity": Flag("Policy: routing weight of a server holding the prefix"),
    "policy_saturated": Flag("Policy: load at which a server goes behind the others"),
    "policy_stability_weight": Flag("Policy: high priority's bonus per hour of uptime"),
    "policy_low_max_load": Flag("Policy: low priority goes to servers at or below this load"),
    "policy_default_priority": Flag("Policy: priority of a request that asks for none"),
    "policy_client_max_priority": Flag("Policy: the highest priority a client may ask"),
    "policy_priority_scheduling": Flag("Policy: engines schedule by request priority"),
    "policy_low_reserve": Flag("Policy: share of an engine's batch slots low requests leave free"),
    "policy_scale_add_load": Flag("Policy: swarmscale adds a replica above this mean load"),
    "policy_scale_add_queue": Flag("Policy: ... or above this many requests waiting"),
    "policy_scale_add_ttft": Flag("Policy: ... or above this time to first token (s)"),
    "policy_scale_drop_load": Flag("Policy: swarmscale drops a replica below this load"),
    "policy_scale_drop_queue": Flag("Policy: ... and below this many requests waiting"),
    "policy_scale_drop_after": Flag("Policy: ... for this long (s)"),
    "policy_scale_replicas": Flag("Policy: replicas a swarmscale vote asks for"),
}


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(AgentConfig)


def _convert(name: str, tp: Any, value: Any, layer: str) -> Any:
    """Coerce a TOML value or an environment string to the field's type."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        if value is None or value == "":
            return None
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    try:
        if tp is Path:
            return Path(value).expanduser()
        if tp is bool:
            if isinstance(value, bool):
                return value
            word = str(value).strip().lower()
            if word in _TRUE | _FALSE:
                return word in _TRUE
            raise ValueError("true or false")
        if tp is int:
            if isinstance(value, bool):
                raise ValueError("a number, not a boolean")
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError("a number, not a boolean")
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise ValueError("a string")
            return value
        if typing.get_origin(tp) is tuple:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError("a list of strings")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{layer}: {name}={value!r} is not valid ({e})") from None
    raise ConfigError(f"{layer}: cannot set {name}")  # pragma: no cover - all types handled


def load_config(
    file: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Merge defaults, TOML ``file``, ``env`` (``HEXAMESH_*``) and CLI ``overrides``.

    ``overrides`` holds only the flags the user gave (None values are ignored).
    """
    env = os.environ if env is None else env
    types_ = _field_types()
    values: dict[str, Any] = {}

    if file is None and env.get(ENV_PREFIX + "CONFIG"):
        file = Path(env[ENV_PREFIX + "CONFIG"])
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file {file}: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{file}: {e}") from None
        for key, value in _flatten_policy(data, file).items():
            name = key.replace("-", "_")
            if name not in types_:
                raise ConfigError(
                    f"{file}: unknown key {key!r}; known: {', '.join(sorted(types_))}"
                )
            values[name] = _convert(name, types_[name], value, str(file))

    for name, tp in types_.items():
        var = ENV_PREFIX + name.upper()
        if var in env:
            values[name] = _convert(name, tp, env[var], f"${var}")

    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in types_:
            raise ConfigError(f"unknown option {name!r}")
        values[name] = _convert(name, types_[name], value, f"--{name.replace('_', '-')}")

    for field, keys in _SECRET_FILES.items():
        path = values.get(field)
        if path is None:
            continue
        lines = _read_secret_file(path, field)
        if keys == "token":
            values["token"] = lines[0] if lines else None
        else:
            values[keys] = (*values.get(keys, ()), *lines)
    return AgentConfig(**values)


def _flatten_policy(data: dict[str, Any], file: Path) -> dict[str, Any]:
    """A TOML file's ``[policy]`` table as ``policy_<key>`` fields
    (``job_retention`` there is the top-level one)."""
    out = {k: v for k, v in data.items() if k != "policy"}
    section = data.get("policy", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{file}: policy must be a table ([policy])")
    for key, value in section.items():
        name = key.replace("-", "_")
        out[name if name == "job_retention" else f"policy_{name}"] = value
    return out


# ``*_file`` fields and the field their contents go to.
_SECRET_FILES = {
    "token_file": "token",
    "api_key_file": "api_keys",
    "admin_key_file": "admin_keys",
    "metrics_key_file": "metrics_keys",
}


def _read_secret_file(path: Path, field: str) -> list[str]:
    """The non-blank, non-comment lines of a secret file; ConfigError for one
    that is missing or readable by group or others."""
    try:  # no symlink followed, and the mode read from the file opened
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            with os.fdopen(os.dup(fd)) as f:
                text = f.read()
        finally:
            os.close(fd)
    except OSError as e:
        raise ConfigError(f"{field}: cannot read {path}: {e.strerror}") from None
    mode = st.st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(
            f"{field}: {path} is readable by others (mode {mode:04o}); run `chmod 600 {path}`"
        )
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{field}: {path} belongs to another user (uid {st.st_uid})")
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]
