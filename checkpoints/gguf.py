"""LLaMA-family GGUF files (llama.cpp's format) as Hugging Face folders that vLLM serves.

transformers reads a GGUF file and dequantizes it; the result is saved once as a plain
LLaMA folder (safetensors, tokenizer, chat template, generation config) in a cache keyed by the
file's content, so the same file is converted once and a changed one again. A folder is
built beside its final place and renamed into it when complete: a half-written one is never
used, and one left broken (no completion mark) is rebuilt.
"""

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

COMPLETE = ".complete"  # written last into a finished folder
LLAMA_FAMILY = ("llama",)  # model types saved as LlamaForCausalLM


class GGUFError(ValueError):
    """A GGUF file that cannot be served (one line, for the start-up message)."""


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def convert(gguf_file: Path, out_dir: Path, dtype: str = "float32") -> Path:
    """Dequantize ``gguf_file`` into a LLaMA folder at ``out_dir`` (which must not exist)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    directory, name = str(gguf_file.parent), gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=name, dtype=getattr(torch, dtype)
        )
    except (ValueError, KeyError, OSError) as error:
        raise GGUFError(f"{gguf_file}: not a GGUF file transformers can read ({error})") from None
    config = loaded.config
    if config.model_type not in LLAMA_FAMILY:
        raise GGUFError(
            f"{gguf_file}: architecture {config.model_type!r} is not LLaMA-family; "
            f"this server converts {', '.join(LLAMA_FAMILY)}"
        )
    # transformers marks a dequantized GGUF model as quantized and refuses to save it.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.save_pretrained(out_dir)
    _add_bos_as_llama_cpp_does(tokenizer, gguf_file)
    tokenizer.save_pretrained(out_dir)
    GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    return out_dir


def _metadata(gguf_file: Path, key: str):
    from gguf import GGUFReader

    field = GGUFReader(gguf_file).fields.get(key)
    return None if field is None else field.contents()


def _add_bos_as_llama_cpp_does(tokenizer, gguf_file: Path) -> None:
    """llama.cpp starts every prompt with BOS when the file says ``add_bos_token``; the
    tokenizer transformers builds from the file does not read that key, so it is set here."""
    from tokenizers import processors

    bos = tokenizer.bos_token
    if not _metadata(gguf_file, "tokenizer.ggml.add_bos_token") or bos is None:
        return
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A",
        pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, tokenizer.bos_token_id)],
    )


def cached_conversion(gguf_file: Path, cache_dir: Path, dtype: str = "float32") -> Path:
    """The converted folder of ``gguf_file`` in ``cache_dir``, converting it the first time."""
    gguf_file = Path(gguf_file)
    final = Path(cache_dir) / f"gguf-{file_digest(gguf_file)[:16]}-{dtype}"
    if (final / COMPLETE).is_file():
        return final
    if final.exists():
        logger.warning("rebuilding %s: an earlier conversion did not finish", final)
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    logger.info("converting %s into %s (once)", gguf_file, final)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".converting-") as tmp:
        built = convert(gguf_file, Path(tmp) / "model", dtype)
        (built / "source.txt").write_text(f"{gguf_file.name}\n")
        (built / COMPLETE).write_text("")
        try:
            built.rename(final)
        except OSError:  # another process finished first
            if not (final / COMPLETE).is_file():
                raise
    return final
