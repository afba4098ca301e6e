"""The tiny model maker: deterministic for a seed, a shape vLLM's CPU backend takes."""

import importlib.util
import json
import os
from pathlib import Path

import pytest

if importlib.util.find_spec("transformers") is None:
    if os.environ.get("HEXAMESH_REQUIRE_VLLM") == "1":
        raise RuntimeError("HEXAMESH_REQUIRE_VLLM=1 but transformers is not importable")
    pytest.skip("needs the engine extras (pip install 'hexamesh[cpu]')", allow_module_level=True)

from hexamesh.engine.tiny import make_tiny_model


def test_same_seed_same_model_other_seed_other_weights(tmp_path: Path) -> None:
    a = make_tiny_model(tmp_path / "a", seed=0)
    b = make_tiny_model(tmp_path / "b", seed=0)
    c = make_tiny_model(tmp_path / "c", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    config = json.loads((a / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] == 64  # CPU attention's minimum
    assert config["vocab_size"] <= 2100
