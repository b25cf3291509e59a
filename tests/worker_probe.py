"""Functions `LLM.apply_model` runs inside the vLLM worker (importable there by name)."""

from typing import Any


def rotary_tables(model: Any) -> list[tuple[str, list[list[float]]]]:
    """Class name and cos/sin table of every distinct rotary embedding in the model."""
    seen: dict[int, tuple[str, list[list[float]]]] = {}
    for module in model.modules():
        table = getattr(module, "cos_sin_cache", None)
        if table is not None and id(module) not in seen:
            seen[id(module)] = (type(module).__name__, table.float().cpu().tolist())
    return list(seen.values())
