"""A position offset per request in vLLM's model runner: one engine, a table per request.

vLLM's V1 model runner (``GPUModelRunner``; the CPU build's ``CPUModelRunner`` inherits it)
computes each scheduled token's position, then the KV slots from those positions, in
``_prepare_inputs``. Wrapped here, it then adds the request's ``TABLE_OFFSET`` (from its
``SamplingParams.extra_args``) to the positions of that request's tokens: the KV cache keeps
the real positions, only the rotary embedding reads the shifted ones, so such a request reads
the unscaled rows of a two-part table (`rope_plugins.vllm_rotary`). A request without the key
is untouched, and a step with none of them costs one dict lookup per request.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rope_plugins.catalog import TABLE_OFFSET

_WRAPPED = "__resonance_wrapped__"
_PARAMETERS = ["self", "scheduler_output", "num_scheduled_tokens"]
# What the wrapper relies on: the function fills self.positions and maps KV slots from them.
_SOURCE_MARKS = ("self.positions[:total_num_scheduled_tokens] =", "compute_slot_mapping(")


# Why the hook could not be installed in this process (None: installed, or not tried yet).
unavailable: str | None = None


def check_hooked(function: Callable[..., Any]) -> None:
    """A clear error if vLLM changed the function this module wraps."""
    names = list(inspect.signature(function).parameters)
    source = inspect.getsource(function)
    missing = [mark for mark in _SOURCE_MARKS if mark not in source]
    if names != _PARAMETERS or missing:
        import vllm

        raise RuntimeError(
            f"vLLM {vllm.__version__} changed GPUModelRunner._prepare_inputs (parameters "
            f"{names}, missing {missing}); per-request RoPE tables support vLLM 0.32"
        )


def offsets(runner: Any) -> np.ndarray | None:
    """Each scheduled request's offset, in the batch's order; None when every one is 0."""
    found = None
    req_ids = runner.input_batch.req_ids
    for index, req_id in enumerate(req_ids):
        state = runner.requests.get(req_id)
        params = getattr(state, "sampling_params", None)
        extra = getattr(params, "extra_args", None)
        if extra and extra.get(TABLE_OFFSET):
            if found is None:
                found = np.zeros(len(req_ids), dtype=np.int64)
            found[index] = extra[TABLE_OFFSET]
    return found


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _prepare_inputs(self: Any, scheduler_output: Any, num_scheduled_tokens: np.ndarray):
        result = original(self, scheduler_output, num_scheduled_tokens)
        shift = offsets(self)
        if shift is not None:
            per_token = torch.from_numpy(np.repeat(shift, num_scheduled_tokens))
            self.positions[: len(per_token)] += per_token.to(self.positions.device)
        return result

    setattr(_prepare_inputs, _WRAPPED, True)
    return _prepare_inputs


def install() -> None:
    """Wrap the runner; if vLLM changed it, leave it alone and say why in `unavailable` (a
    static table needs no hook; a per-request one is then refused, `require`)."""
    global unavailable
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner._prepare_inputs, _WRAPPED, False):
        return
    try:
        check_hooked(GPUModelRunner._prepare_inputs)
    except RuntimeError as error:
        unavailable = str(error)
        return
    GPUModelRunner._prepare_inputs = _wrap(GPUModelRunner._prepare_inputs)


def require() -> None:
    """Raise if a per-request table is asked for where the hook is not installed."""
    if unavailable is not None:
        raise RuntimeError(f"resonance rope plugin: {unavailable}: use --rope-policy static")
