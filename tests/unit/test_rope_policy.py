"""Per-request RoPE tables without an engine: which policy a server runs, which table each
request gets, and the model runner's offsets (the two-part table itself:
tests/engine/test_vllm_parity.py)."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams

from rope_plugins import table_offsets
from rope_plugins.catalog import TABLE_OFFSET, UNSCALED_ROWS
from server.metrics import Metrics
from server.plan import RopePolicy, build_plan
from server.rope_tables import SCALED, UNSCALED, RopeTables, Route, continuable
from server.settings import Settings
from tests.plans import MACHINE, folder, tiny_config, trained_with_scaling

SCALED_FLAGS = {"rope_type": "resonance_yarn", "rope_factor": 4}


def plan_of(config=None, **settings):
    return build_plan(
        Settings(model="org/tiny", **settings), folder(), config or tiny_config(), MACHINE
    )


def test_a_resonance_scaling_set_by_flags_on_a_plain_checkpoint_is_per_request():
    plan = plan_of(**SCALED_FLAGS)
    policy = plan.info.rope_policy
    assert policy == RopePolicy(
        "per-request",
        "unscaled up to the trained 256 tokens, resonance_yarn past them",
        trained=256,
        table_offset=1024,
    )
    assert plan.engine_args["hf_overrides"]["rope_parameters"][UNSCALED_ROWS] == 256
    assert plan.info.rope[UNSCALED_ROWS] == 256 and plan.info.max_model_len == 1024


def test_static_keeps_todays_rope_parameters_exactly():
    static = plan_of(**SCALED_FLAGS, rope_policy="static")
    assert static.info.rope_policy.name == "static"
    assert UNSCALED_ROWS not in static.engine_args["hf_overrides"]["rope_parameters"]


@pytest.mark.parametrize(
    ("settings", "config", "reason"),
    [
        ({}, None, "nothing is scaled"),
        ({"rope_type": "yarn", "rope_factor": 4}, None, "not yarn"),
        ({"rope_type": "resonance"}, None, "not resonance"),
        (
            {**SCALED_FLAGS, "engine_args": {"speculative_config": {"method": "ngram"}}},
            None,
            "speculative decoding's drafter would read unshifted positions",
        ),
        (
            SCALED_FLAGS,
            {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}},
            "the checkpoint's config carries a yarn scaling: it was trained with it",
        ),
    ],
)
def test_where_per_request_is_not_defined_static_is_the_default_and_asking_is_refused(
    settings, config, reason
):
    config = tiny_config(**(config or {}))
    default = plan_of(config, **settings).info.rope_policy
    assert default.name == "static" and reason in default.reason
    with pytest.raises(ValueError) as refused:
        plan_of(config, **settings, rope_policy="per-request")
    message = str(refused.value)
    assert message.startswith("rope_policy per-request: ") and reason in message
    assert message.endswith("use --rope-policy static") and "\n" not in message


def test_a_checkpoint_trained_with_its_scaling_is_served_static_and_says_why():
    config = trained_with_scaling()
    policy = plan_of(config).info.rope_policy
    assert policy.name == "static"
    assert (
        policy.reason
        == "the checkpoint's config carries its RoPE (resonance_yarn): served as trained"
    )


# ------------------------------------------------------------------ the choice per request
PER_REQUEST = RopePolicy("per-request", "", trained=256, table_offset=1024)


def tables(policy: RopePolicy = PER_REQUEST, static: str = SCALED) -> RopeTables:
    from prometheus_client import CollectorRegistry

    return RopeTables(policy, static, Metrics(1024, CollectorRegistry()))


@pytest.mark.parametrize(
    ("prompt", "params", "route"),
    [
        (100, SamplingParams(max_tokens=156), Route(UNSCALED)),  # exactly the trained 256
        (255, SamplingParams(max_tokens=1), Route(UNSCALED)),
        (256, SamplingParams(max_tokens=1), Route(SCALED)),
        (100, SamplingParams(max_tokens=157), Route(UNSCALED, switch_after=156)),
        (100, SamplingParams(max_tokens=900, n=2), Route(SCALED)),
        (100, SamplingParams(max_tokens=900, stop=["\n"]), Route(SCALED)),
        (100, SamplingParams(max_tokens=900, presence_penalty=0.5), Route(SCALED)),
        (100, SamplingParams(max_tokens=900, frequency_penalty=0.5), Route(SCALED)),
        (100, SamplingParams(max_tokens=900, repetition_penalty=1.2), Route(UNSCALED, 156)),
        (300, SamplingParams(max_tokens=10), Route(SCALED)),
    ],
)
def test_each_request_gets_the_table_its_length_needs(prompt, params, route):
    assert tables().route(prompt, params) == route


def test_a_constrained_request_that_may_outgrow_the_trained_length_runs_scaled():
    from vllm.sampling_params import StructuredOutputsParams

    params = SamplingParams(max_tokens=900, structured_outputs=StructuredOutputsParams(json={}))
    assert not continuable(params)
    assert tables().route(10, params) == Route(SCALED)


def test_the_static_policy_names_its_one_table():
    static = RopePolicy("static", "")
    assert tables(static, SCALED).route(10, SamplingParams(max_tokens=5)) == Route(SCALED)
    assert tables(static, UNSCALED).route(900, SamplingParams(max_tokens=5)) == Route(UNSCALED)
    assert Route(UNSCALED, 10).label == "unscaled-then-scaled"


# ------------------------------------------------------------------ the table and the offsets
def runner(requests: dict[str, dict | None], order: list[str]) -> SimpleNamespace:
    states = {
        req_id: SimpleNamespace(sampling_params=SamplingParams(extra_args=extra))
        for req_id, extra in requests.items()
    }
    return SimpleNamespace(input_batch=SimpleNamespace(req_ids=order), requests=states)


def test_offsets_follow_the_batch_order_and_are_none_when_no_request_is_shifted():
    batch = runner({"a": None, "b": {TABLE_OFFSET: 1024}, "c": {"other": 1}}, ["c", "b", "a"])
    assert table_offsets.offsets(batch).tolist() == [0, 1024, 0]
    assert table_offsets.offsets(runner({"a": None}, ["a"])) is None


def test_the_wrapped_runner_shifts_only_the_tokens_of_shifted_requests():
    def prepare(self, scheduler_output, num_scheduled_tokens):
        total = int(num_scheduled_tokens.sum())
        self.positions[:total] = torch.arange(total)  # what vLLM computes, simplified
        return "logits indices"

    batch = runner({"a": None, "b": {TABLE_OFFSET: 1000}}, ["a", "b"])
    batch.positions = torch.zeros(8, dtype=torch.int64)
    wrapped = table_offsets._wrap(prepare)
    assert wrapped(batch, None, np.array([2, 3])) == "logits indices"
    assert batch.positions.tolist() == [0, 1, 1002, 1003, 1004, 0, 0, 0]


def test_vllms_hooked_function_is_checked_and_a_changed_one_refused_naming_the_policy(
    monkeypatch,
):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    hooked = GPUModelRunner._prepare_inputs
    table_offsets.check_hooked(getattr(hooked, "__wrapped__", hooked))  # vLLM 0.32's: accepted

    def renamed(self, scheduler_output, num_scheduled_tokens, extra):
        return None

    with pytest.raises(RuntimeError, match=r"changed GPUModelRunner\._prepare_inputs"):
        table_offsets.check_hooked(renamed)
    # then a per-request table is refused, a static one served, and the plan says why
    monkeypatch.setattr(table_offsets, "unavailable", "vLLM 9 changed it")
    with pytest.raises(RuntimeError, match=r"vLLM 9 changed it: use --rope-policy static"):
        table_offsets.require()
    hookless = dataclasses.replace(MACHINE, per_request_hook_error="vLLM 9 changed it")
    settings = Settings(model="org/tiny", **SCALED_FLAGS)
    assert build_plan(settings, folder(), tiny_config(), hookless).info.rope_policy == RopePolicy(
        "static", "vLLM 9 changed it"
    )
