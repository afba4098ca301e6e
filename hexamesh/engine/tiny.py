"""A tiny random-weight Llama model made locally, for tests and the demo.

No hub access: the tokenizer is a byte-level BPE trained on a generated corpus
with ``tokenizers``; the weights are random (seeded) and saved with
``transformers``. vLLM's CPU backend serves it: head_dim must be 64 (its CPU
attention rejects 16), hence hidden 128 with 2 heads. The output is nonsense
text, produced at the speed a model of this shape allows, which is what the
tests and benchmarks need. Same seed, same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

__all__ = ["SMALL_CONFIG", "TINY_CONFIG", "make_tiny_model"]

TINY_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,  # head_dim 64
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
# A larger shape, for benchmarks whose differences must be measurable: a
# 1,500-token prefill takes some 50 ms and more on two cores (the tiny one's
# takes a few), its context holds 4,096 tokens.
SMALL_CONFIG = {
    **TINY_CONFIG,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # head_dim 64
    "max_position_embeddings": 4096,
}
SHAPES = {"tiny": TINY_CONFIG, "small": SMALL_CONFIG}
VOCAB_SIZE = 2048  # BPE merges learned on the corpus below
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_WORDS = (  # noqa: SIM905 - prose reads better than a list of 50 strings
    "the swarm serves prompts with no central coordinator every machine runs the same agent "
    "bees dance to tell where flowers are a hive decides where to live by scouts voting "
    "hexagonal cells six neighbours gossip load models failure detection heartbeat quorum "
    "token stream model weights inference request answer question hello world peer node"
).split()


def _corpus(rng: random.Random, lines: int = 4000) -> list[str]:
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(lines)]


def make_tiny_model(out: Path, *, seed: int = 0, shape: str = "tiny") -> Path:
    """Write a servable tiny Llama model (config, safetensors, tokenizer) to
    ``out``; ``shape``: ``tiny``, or ``small`` (see ``SMALL_CONFIG``)."""
    config_of_shape = SHAPES[shape]
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(rng), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        torch_dtype="float32",
        **config_of_shape,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    (out / "hexamesh-tiny.json").write_text(json.dumps({"seed": seed, **config_of_shape}))
    return out
