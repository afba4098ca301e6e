"""`hexamesh agent`: its options, generated from the configuration, and its run."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import signal
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import trio
import typer
from rich.table import Table

from hexamesh.agent import (
    AgentStatus,
    PreparedAgent,
    prepare_agent,
    run_agent,
)
from hexamesh.cli.common import _fail, _setup_logging, app, console
from hexamesh.config import (
    FLAGS,
    AgentConfig,
    ConfigError,
    load_config,
)
from hexamesh.fileio import DataDirBusy
from hexamesh.identity import IdentityError
from hexamesh.invites import InviteError
from hexamesh.operator import OperatorKeyError
from hexamesh.swarmkey import (
    SwarmKeyError,
)


def _print_ready(status: AgentStatus) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("node id", f"[bold]{status.node_id}[/]")
    table.add_row("address", status.address)
    table.add_row("cell", status.cell or "being chosen (see `hexamesh peers`)")
    table.add_row("role", "founder of a new swarm" if status.founder else "joining")
    for seed in status.seeds:
        table.add_row("seed", seed)
    console.print(table)
    console.print("[dim]running; Ctrl-C or SIGTERM stops it[/]")


def _leaf_errors(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaf_errors(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _agent_main(agent: PreparedAgent) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_agent(agent, on_ready=_print_ready, task_status=task_status)
            )
            async for signum in signals:
                logging.getLogger("hexamesh").info("%s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    console.print("stopped")


_METAVARS = {str: "TEXT", int: "INTEGER", float: "FLOAT", Path: "PATH", bool: None}


def agent_parameters() -> list[inspect.Parameter]:
    """The `agent` command's options: one per ``AgentConfig`` field (its type,
    its default in the help, its text from ``config.FLAGS``), and --config."""
    hints = typing.get_type_hints(AgentConfig)
    params = []
    for f in dataclasses.fields(AgentConfig):
        flag = FLAGS[f.name]
        name = flag.name or f.name
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base = args[0] if typing.get_origin(tp) in (types.UnionType, typing.Union) else tp
        default = f.default if f.default is not dataclasses.MISSING else None
        dashed = name.replace("_", "-")
        decls: list[str] = []
        if typing.get_origin(base) is tuple:
            cli_type: Any = list[str]
            metavar = "TEXT"
            shown = ""  # repeatable: none unless given
        elif base is bool:
            cli_type, metavar = bool, None
            decls = [f"--{dashed}/--no-{dashed}"]
            shown = " \\[default: " + ("on" if default else "off") + "]"
        else:
            cli_type, metavar = base, _METAVARS[base]
            shown = "" if default is None else f" \\[default: {default}]"
        option = typer.Option(
            *decls, help=flag.help + shown, hidden=flag.hidden, show_default=False, metavar=metavar
        )
        params.append(_keyword(name, Annotated[cli_type | None, option]))
    config = typer.Option("--config", help="TOML config file [env: HEXAMESH_CONFIG]")
    params.append(_keyword("config", Annotated[Path | None, config]))
    return params


def _keyword(name: str, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


ARGV_SECRETS = ("token", "api_key", "admin_key", "metrics_key")  # flags that warn


def agent(**options: Any) -> None:
    """Run an agent on this machine until Ctrl-C / SIGTERM.

    Every option can also come from a HEXAMESH_<NAME> environment variable or
    the TOML file given by --config; flags win over the environment, which wins
    over the file.
    """
    config = options.pop("config")
    flag_of = {FLAGS[f.name].name or f.name: f.name for f in dataclasses.fields(AgentConfig)}
    overrides = {
        flag_of[name]: (value or None) if isinstance(value, list) else value
        for name, value in options.items()
    }
    try:
        cfg = load_config(config, overrides=overrides)
    except ConfigError as e:
        raise _fail(str(e)) from None
    _setup_logging(cfg.log_level)
    for name in ARGV_SECRETS:
        if options.get(name):
            flag = "--" + name.replace("_", "-")
            logging.getLogger("hexamesh").warning(
                "%s on the command line is visible to every local user (ps, /proc): "
                "use %s-file or the HEXAMESH_ environment instead",
                flag,
                flag,
            )
    try:
        prepared = prepare_agent(cfg)
    except (DataDirBusy, IdentityError, SwarmKeyError, OperatorKeyError, InviteError) as e:
        raise _fail(str(e)) from None
    try:
        trio.run(_agent_main, prepared)
    except BaseExceptionGroup as group:
        # Binding or resolving failed inside the nursery: say so, no traceback.
        errors = _leaf_errors(group)
        if errors and all(isinstance(e, OSError | InviteError) for e in errors):
            raise _fail(f"cannot start the agent: {errors[0]}") from None
        raise


agent.__signature__ = inspect.Signature(agent_parameters())  # type: ignore[attr-defined]


app.command()(agent)
