"""`hexamesh model`: models for the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hexamesh.cli.common import _fail, console, model_app


@model_app.command("make-tiny")
def model_make_tiny(
    out: Annotated[Path, typer.Argument(help="Directory to write the model to")],
    seed: Annotated[int, typer.Option(help="Same seed, same weights and tokenizer")] = 0,
    shape: Annotated[
        str, typer.Option(help="tiny, or small (a prefill long enough to measure; 4,096 context)")
    ] = "tiny",
) -> None:
    """Write a tiny random-weight Llama model vLLM can serve (tests, demo; no hub)."""
    try:
        from hexamesh.engine.tiny import make_tiny_model
    except ImportError as e:  # pragma: no cover - depends on the install
        raise _fail(f"needs the engine extras (pip install 'hexamesh[cpu]'): {e}") from None
    try:
        if shape not in ("tiny", "small"):
            raise _fail("--shape is tiny or small")
        make_tiny_model(out, seed=seed, shape=shape)
    except ImportError as e:
        raise _fail(f"needs the engine extras (pip install 'hexamesh[cpu]'): {e}") from None
    console.print(f"tiny model written to {out}")
