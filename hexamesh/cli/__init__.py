"""The ``hexamesh`` command line (typer + rich), one module per group of commands:
``keys`` (version, swarm), ``agent``, ``network`` (ping, peers, dht),
``serving`` (submit, models, jobs, place), ``models`` (model make-tiny),
``faults`` (demo, chaos, simulate); ``common`` holds what they share."""

from hexamesh.cli import agent, faults, keys, models, network, serving
from hexamesh.cli.agent import agent_parameters
from hexamesh.cli.common import app

__all__ = ["agent_parameters", "app", "main"]

_COMMANDS = (keys, agent, network, serving, models, faults)  # imported: they register themselves


def main() -> None:
    app()
