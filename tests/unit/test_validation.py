"""Bad rope_parameters fail with one message that names the field and what is accepted."""

import pytest

from rope_plugins import RopeParameterError, validate_rope_parameters

YARN = {"rope_type": "resonance_yarn", "factor": 4.0, "original_max_position_embeddings": 4096}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"rope_type": "resonance_foo"},
            "unknown Resonance type 'resonance_foo'; accepted: resonance, resonance_yarn",
        ),
        ({**YARN, "factor": 0.5}, "rope_parameters.factor must be a number >= 1 (got 0.5)"),
        ({**YARN, "factor": "4"}, "rope_parameters.factor must be a number >= 1 (got '4')"),
        ({**YARN, "factor": True}, "rope_parameters.factor must be a number >= 1"),
        (
            {"rope_type": "resonance_yarn", "factor": 4.0},
            "original_max_position_embeddings is required",
        ),
        ({**YARN, "original_max_position_embeddings": 4096.5}, "must be a positive integer"),
        ({**YARN, "beta_fast": 1, "beta_slow": 2}, "beta_fast must be greater than beta_slow"),
        (
            {**YARN, "beta_fast": 0.5},
            "beta_fast must be greater than beta_slow (got beta_fast=0.5, beta_slow=1)",
        ),
        ({**YARN, "truncate": "no"}, "rope_parameters.truncate must be true or false"),
        ({**YARN, "rope_theta": -1}, "rope_parameters.rope_theta must be a number > 0"),
        (
            {"rope_type": "resonance_linear"},
            "rope_parameters.factor is required for rope_type 'resonance_linear'",
        ),
        (
            {
                "rope_type": "resonance_llama3",
                "factor": 8.0,
                "original_max_position_embeddings": 8192,
                "low_freq_factor": 4.0,
                "high_freq_factor": 1.0,
            },
            "high_freq_factor must be greater than low_freq_factor",
        ),
    ],
)
def test_bad_values_name_the_field(params, message):
    with pytest.raises(RopeParameterError) as error:
        validate_rope_parameters(params)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "params",
    [
        YARN,
        {**YARN, "beta_fast": 16, "beta_slow": 2, "truncate": False, "attention_factor": 1.2},
        {**YARN, "beta_fast": None, "mscale": 0.707, "mscale_all_dim": 0.707},
        {"rope_type": "resonance"},
        {"rope_type": "resonance_ntk", "factor": 2, "mixed_b": 1.5},
        {"rope_type": "resonance_dynamic", "factor": 2.0, "max_trained_positions": 2048},
    ],
)
def test_good_values_pass(params):
    validate_rope_parameters(params)
