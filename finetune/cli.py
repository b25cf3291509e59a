"""resonance-finetune: extend a model's context by fine-tuning it with a RoPE scaling.

    resonance-finetune --model CKPT --rope-type resonance_yarn --rope-factor 4 \\
        --corpus texts/ --seq-len 8192 --out extended
    resonance-serve --model extended            # serves the trained scaling, no RoPE flags

Everything that can be refused is refused before anything is written.
"""

import argparse
import sys
from pathlib import Path

from finetune import training
from finetune.corpus import CorpusError, build_corpus
from finetune.training import LORA_TARGETS, FinetuneError, Options
from rope_plugins.catalog import SERVABLE_TYPES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="resonance-finetune",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="checkpoint folder or .gguf file")
    p.add_argument("--out", required=True, help="output directory (resumed if interrupted)")
    p.add_argument(
        "--corpus",
        required=True,
        action="append",
        help="text file, .jsonl file (a 'text' field per line) or folder of them; repeatable",
    )
    p.add_argument("--rope-type", required=True, choices=SERVABLE_TYPES)
    p.add_argument("--rope-factor", type=float, default=None)
    p.add_argument(
        "--original-max-position-embeddings",
        type=int,
        default=None,
        help="the context being extended (default: the checkpoint's trained context)",
    )
    p.add_argument("--yarn-beta-fast", type=float, default=32.0)
    p.add_argument("--yarn-beta-slow", type=float, default=1.0)
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per training sequence")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per micro-batch")
    p.add_argument("--gradient-accumulation", type=int, default=8, help="micro-batches per step")
    p.add_argument("--learning-rate", type=float, default=2e-5, help="AdamW, cosine decay")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--lora-rank", type=int, default=None, help="train a LoRA adapter (peft)")
    p.add_argument("--lora-alpha", type=float, default=None, help="default: 2 x rank")
    p.add_argument(
        "--lora-targets",
        default=",".join(LORA_TARGETS),
        help="comma-separated module names the adapter wraps",
    )
    p.add_argument("--held-out-percent", type=float, default=5.0, help="documents held out")
    p.add_argument("--save-steps", type=int, default=50, help="steps between resumable saves")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cache-dir",
        default=str(Path.home() / ".cache" / "resonance-serve"),
        help="where a .gguf model is converted once (shared with resonance-serve)",
    )
    return p


def options_from(args: argparse.Namespace) -> Options:
    for name in ("seq_len", "steps", "batch_size", "gradient_accumulation", "save_steps"):
        if getattr(args, name) < 1:
            raise FinetuneError(f"--{name.replace('_', '-')} must be at least 1")
    if args.lora_rank is not None and args.lora_rank < 1:
        raise FinetuneError("--lora-rank must be at least 1")
    if not 0 <= args.held_out_percent < 100:
        raise FinetuneError("--held-out-percent must be in [0, 100)")
    return Options(
        model=args.model,
        out=str(Path(args.out).resolve()),
        corpus=[str(Path(c).resolve()) for c in args.corpus],
        rope_type=args.rope_type,
        rope_factor=args.rope_factor,
        original_max_position_embeddings=args.original_max_position_embeddings,
        yarn_beta_fast=args.yarn_beta_fast,
        yarn_beta_slow=args.yarn_beta_slow,
        seq_len=args.seq_len,
        steps=args.steps,
        batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        gradient_checkpointing=args.gradient_checkpointing,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_targets=[t.strip() for t in args.lora_targets.split(",") if t.strip()],
        held_out_percent=args.held_out_percent,
        save_steps=args.save_steps,
        seed=args.seed,
        cache_dir=args.cache_dir,
    )


def run(options: Options) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    from rope_plugins import transformers_hooks

    transformers_hooks.install()
    training.check_output(options)
    folder = training.model_folder(options)
    config = AutoConfig.from_pretrained(folder)
    scaled = training.scaling(options, config)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    corpus = build_corpus(
        [Path(c) for c in options.corpus], tokenizer, options.seq_len, options.held_out_percent
    )
    config.rope_parameters = scaled.rope_parameters
    config.max_position_embeddings = scaled.max_position_embeddings
    print(
        f"resonance-finetune: {options.rope_type} x{options.rope_factor or 1:g}, trained "
        f"{scaled.trained} -> served {scaled.served} tokens; {len(corpus.train)} sequences of "
        f"{options.seq_len} tokens from {corpus.documents - corpus.held_out_documents} "
        f"documents, {corpus.held_out_documents} held out",
        flush=True,
    )
    return training.train(options, folder, config, tokenizer, corpus)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        options = options_from(args)
        result = run(options)
    except (FinetuneError, CorpusError, OSError) as error:
        sys.exit(f"resonance-finetune: error: {error}")
    out = Path(options.out)
    held = result["held_out_loss"]
    print(
        f"trained {result['steps']} steps in {result['seconds']:.0f} s; last logged loss "
        f"{result['last_logged_loss']:.4f}; held-out loss "
        + (f"{held:.4f} (perplexity {result['held_out_perplexity']:.2f})" if held else "n/a")
    )
    if options.lora_rank:
        # vLLM's --max-lora-rank takes one of these values (vllm.config.lora.MaxLoRARanks)
        rank = next(r for r in (1, 8, 16, 32, 64, 128, 256, 320, 512) if r >= options.lora_rank)
        print(
            f"serve: resonance-serve --model {out / 'base'} --lora-module NAME={out / 'adapter'}"
            f" --max-lora-rank {rank}"
        )
    else:
        print(f"serve: resonance-serve --model {out}")


if __name__ == "__main__":
    main()
