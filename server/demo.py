"""The model served when no --model is given, prepared once in the cache directory."""

import tempfile
from pathlib import Path

from checkpoints.tiny import build_tiny_checkpoint

DEMO_NAME = "resonance-demo"
DEMO_VERSION = 1  # bump when the demo checkpoint's recipe changes


def demo_checkpoint(cache_dir: Path) -> Path:
    """The demo model: plain RoPE over 256 positions, built once into ``cache_dir``.

    The server extends it with its RoPE settings, as it would an unmodified real checkpoint.
    Built beside its final place and renamed into it, so a half-written one is never used.
    """
    final = Path(cache_dir) / f"{DEMO_NAME}-v{DEMO_VERSION}"
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        build_tiny_checkpoint(Path(tmp) / "model")
        try:
            (Path(tmp) / "model").rename(final)
        except OSError:  # another process got there first
            if not (final / "config.json").is_file():
                raise
    return final
