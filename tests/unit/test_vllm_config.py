"""vLLM's model configuration with Resonance types given as overrides of a plain checkpoint."""

import pytest
from vllm.config import ModelConfig
from vllm.plugins import load_general_plugins

from tests.helpers import ORIGINAL_CONTEXT


@pytest.fixture(scope="module", autouse=True)
def plugins():
    load_general_plugins()  # through the installed entry point, as vLLM does


def model_config(checkpoint, **rope_parameters) -> ModelConfig:
    return ModelConfig(model=str(checkpoint), hf_overrides={"rope_parameters": rope_parameters})


@pytest.mark.parametrize(
    ("rope_parameters", "served"),
    [
        # Like vLLM's yarn when max_position_embeddings is the extended length...
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256}, 256),
        # ...and original * factor when the checkpoint's config was left as trained.
        (
            {"rope_type": "resonance_yarn", "factor": 4.0, "original_max_position_embeddings": 256},
            1024,
        ),
        ({"rope_type": "linear", "factor": 4.0}, 1024),
        ({"rope_type": "resonance_linear", "factor": 4.0}, 1024),
        ({"rope_type": "resonance_dynamic", "factor": 2.0}, 512),
        ({"rope_type": "resonance"}, 256),
    ],
)
def test_max_model_len_matches_the_extended_type(plain_checkpoint, rope_parameters, served):
    assert ORIGINAL_CONTEXT == 256
    assert model_config(plain_checkpoint, **rope_parameters).max_model_len == served


def test_extended_checkpoint_serves_its_own_length(resonance_checkpoint):
    config = ModelConfig(model=str(resonance_checkpoint))
    assert config.max_model_len == 1024
    assert config.hf_config.rope_parameters["rope_type"] == "resonance_yarn"


@pytest.mark.parametrize(
    ("rope_parameters", "message"),
    [
        (
            {"rope_type": "resonance_yarn", "factor": 0.5, "original_max_position_embeddings": 256},
            "rope_parameters.factor must be a number >= 1 (got 0.5)",
        ),
        ({"rope_type": "resonance_yarn", "factor": 2.0}, "original_max_position_embeddings"),
        ({"rope_type": "resonance_bogus", "factor": 2.0}, "accepted: resonance, resonance_yarn"),
    ],
)
def test_bad_values_fail_when_the_config_is_made(plain_checkpoint, rope_parameters, message):
    with pytest.raises(ValueError, match="rope_parameters") as error:
        model_config(plain_checkpoint, **rope_parameters)
    assert message in str(error.value)


def test_the_servers_whole_plan_is_accepted_by_vllms_engine_config(plain_checkpoint):
    """Every engine argument the plan makes (the compact-JSON structured-outputs config among
    them) is one vLLM's config takes, checked by vLLM itself without starting an engine."""
    from vllm import AsyncEngineArgs

    from server.model_source import ModelSource
    from server.plan import Platform, build_plan, checkpoint_config
    from server.settings import Settings

    settings = Settings(model=str(plain_checkpoint), rope_type="resonance_yarn", rope_factor=4)
    source = ModelSource(path=str(plain_checkpoint), name=None, origin="test", dtype="float32")
    plan = build_plan(settings, source, checkpoint_config(source.path), Platform(False, 2**34))
    config = AsyncEngineArgs(**plan.engine_args).create_engine_config()
    assert config.structured_outputs_config.disable_any_whitespace is True
    assert config.model_config.max_model_len == 4 * ORIGINAL_CONTEXT
