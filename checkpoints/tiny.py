"""A tiny LLaMA-architecture checkpoint made locally, deterministically, with no download.

Random weights, a byte-level BPE tokenizer trained on generated text, and LLaMA2-Chat's chat
template: enough for vLLM to load and serve it like any Hugging Face model, for tests, demos
and benchmarks. Same arguments, same files.
"""

import argparse
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] %}{% set messages = messages[1:] %}"
    "{% else %}{% set system_message = none %}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "was",
    "that",
    "for",
    "it",
    "with",
    "as",
    "on",
    "be",
    "at",
    "by",
    "this",
    "had",
    "not",
    "are",
    "but",
    "from",
    "or",
    "have",
    "they",
    "which",
    "one",
    "you",
    "were",
    "all",
    "we",
    "when",
    "there",
    "can",
    "an",
    "been",
    "has",
    "more",
    "if",
    "will",
    "would",
    "so",
    "no",
    "time",
    "long",
    "context",
    "model",
    "token",
    "position",
    "rotary",
    "wave",
    "length",
    "round",
    "integer",
    "frequency",
    "scale",
    "server",
    "request",
    "stream",
    "answer",
    "question",
    "story",
    "river",
    "mountain",
    "light",
    "water",
    "stone",
    "city",
    "night",
    "morning",
    "music",
    "number",
    "system",
    "memory",
    "paper",
    "result",
    "value",
    "table",
    "window",
    "signal",
    "phase",
    "period",
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "user",
    "assistant",
    "hello",
    "thanks",
    "please",
    "yes",
    "why",
    "how",
    "what",
    "where",
]

DEFAULT_ARCHITECTURE: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 128,  # LLaMA2's head size, and one the CPU attention backend supports
    # Larger than LLaMA's 0.02 so that attention is sharp enough for RoPE changes to show.
    "initializer_range": 0.25,
}


def sample_text(seed: int, sentences: int = 4000) -> list[str]:
    """Sentences of the tokenizer's words and numbers (its training text, and test corpora)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        words = rng.choices(_WORDS, k=rng.randint(4, 16))
        number = rng.randint(0, 99999)
        lines.append(f"{' '.join(words).capitalize()} {number}{rng.choice('.,!?;:')}")
    return lines


def build_tokenizer(
    seed: int = 0, vocab_size: int = 2000, texts: Iterable[str] | None = None
) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (default: ``sample_text(seed)``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts or sample_text(seed), trainer=trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        chat_template=LLAMA2_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_checkpoint(
    out_dir: str | Path,
    rope_parameters: dict[str, Any] | None = None,
    max_position_embeddings: int = 256,
    seed: int = 0,
    tokenizer: Any = None,
    **architecture: Any,
) -> Path:
    """Write a LLaMA checkpoint and its tokenizer to ``out_dir`` and return that path.

    ``rope_parameters`` goes into config.json as given (plain RoPE with base 10000 if None);
    the weights depend on ``seed`` and the architecture only, never on the RoPE settings;
    ``tokenizer`` (default: ``build_tokenizer(seed)``) is saved beside them.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import rope_plugins.transformers_hooks

    rope_plugins.transformers_hooks.install()
    out = Path(out_dir)
    tokenizer = tokenizer or build_tokenizer(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **{**DEFAULT_ARCHITECTURE, **architecture},
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument(
        "--rope-parameters",
        type=json.loads,
        default=None,
        help='JSON, e.g. \'{"rope_type": "resonance_yarn", "factor": 4, '
        '"original_max_position_embeddings": 256}\'',
    )
    parser.add_argument("--max-position-embeddings", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_checkpoint(
        args.out_dir, args.rope_parameters, args.max_position_embeddings, args.seed
    )
    print(path)


if __name__ == "__main__":
    main()
