"""The PosGen model: a small LlamaForCausalLM over a word-level tokenizer of the task's numbers.

Token ids equal the numbers (0 .. modulus-1), so a sequence is its own list of token ids; the
special tokens vLLM and transformers expect come after them.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


@dataclass(frozen=True)
class ModelSize:
    layers: int
    hidden: int
    heads: int  # of 64 dimensions each
    intermediate: int


# The default is small enough for 2 cores (its time is in docs/RESULTS.md); the paper's is
# 2 layers of d_model 512.
DEFAULT_SIZE = ModelSize(layers=2, hidden=128, heads=2, intermediate=512)
PAPER_SIZE = ModelSize(layers=2, hidden=512, heads=8, intermediate=2048)
HEAD_DIM = 64


def start_token_id(modulus: int) -> int:
    """The id of ``<s>``, the start token of the authors' layout."""
    return modulus + SPECIAL_TOKENS.index("<s>")


def build_tokenizer(modulus: int) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {str(n): n for n in range(modulus)}
    vocab |= {token: modulus + i for i, token in enumerate(SPECIAL_TOKENS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def build_model(
    size: ModelSize, rope_type: str, modulus: int, max_positions: int, seed: int
) -> tuple[Any, Any]:
    """A freshly initialised model (weights depend on ``seed`` only) and its tokenizer.

    ``rope_type`` is what the model trains with: ``default`` or ``resonance``.
    ``max_positions`` is the longest sequence plain RoPE may be asked for (the test length).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import rope_plugins.transformers_hooks

    rope_plugins.transformers_hooks.install()
    tokenizer = build_tokenizer(modulus)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_positions,
        rope_parameters={"rope_type": rope_type, "rope_theta": 10000.0},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(torch.float32), tokenizer


def save(model: Any, tokenizer: Any, out: Path, facts: dict[str, Any]) -> Path:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "posgen.json").write_text(json.dumps(facts, indent=2))
    return out
