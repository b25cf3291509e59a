"""Settings from flags, environment and YAML, and the one-line errors of a bad start-up."""

import pytest

from server.plan import rope_override
from server.settings import Settings, load_settings
from tests.helpers import refusal, run_cli


def test_flags_win_over_environment_over_yaml(tmp_path, monkeypatch):
    config = tmp_path / "settings.yaml"
    config.write_text("rope_type: yarn\nrope_factor: 2\nport: 9000\nhost: 0.0.0.0\n")
    monkeypatch.setenv("RESONANCE_PORT", "9100")
    monkeypatch.setenv("RESONANCE_ROPE_FACTOR", "3")
    settings = load_settings(["--config", str(config), "--rope-factor", "8"])
    assert settings.rope_type == "yarn"  # YAML only
    assert settings.host == "0.0.0.0"  # YAML only
    assert settings.port == 9100  # environment over YAML
    assert settings.rope_factor == 8  # flag over both


def test_config_file_from_the_environment(tmp_path, monkeypatch):
    config = tmp_path / "settings.yaml"
    config.write_text("served_model_name: from-yaml\n")
    monkeypatch.setenv("RESONANCE_CONFIG", str(config))
    assert load_settings([]).served_model_name == "from-yaml"


def test_the_rope_policy_by_flag_environment_and_yaml(tmp_path, monkeypatch):
    config = tmp_path / "settings.yaml"
    config.write_text("rope_policy: static\n")
    assert load_settings(["--config", str(config)]).rope_policy == "static"
    monkeypatch.setenv("RESONANCE_ROPE_POLICY", "per-request")
    assert load_settings(["--config", str(config)]).rope_policy == "per-request"
    assert load_settings(["--rope-policy", "static"]).rope_policy == "static"
    assert "--rope-policy" in refusal("--rope-policy", "sometimes")


def test_demo_defaults_to_resonance_yarn_factor_4():
    settings = load_settings([])
    assert settings.is_demo
    assert (settings.effective_rope_type, settings.effective_factor) == ("resonance_yarn", 4.0)
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)


@pytest.mark.parametrize(
    ("rope_type", "extended_positions"),
    [("resonance_yarn", 16384), ("yarn", 16384), ("resonance_linear", 4096), ("linear", 4096)],
)
def test_rope_override_of_an_unmodified_checkpoint(rope_type, extended_positions):
    settings = Settings(model="m", rope_type=rope_type, rope_factor=4)
    override = rope_override(settings, {"rope_theta": 5e5}, 4096)
    params = override.rope_parameters
    assert override.max_model_len == 16384
    assert params["rope_type"] == rope_type and params["rope_theta"] == 5e5
    assert params["factor"] == 4 and params["original_max_position_embeddings"] == 4096
    assert override.max_position_embeddings == extended_positions
    if rope_type.endswith("yarn"):
        assert (params["beta_fast"], params["beta_slow"]) == (32, 1)


def test_no_rope_settings_leave_the_checkpoint_alone():
    assert rope_override(Settings(model="m"), {"rope_theta": 1e4}, 4096) is None
    plain = rope_override(Settings(model="m", rope_type="none"), {"rope_theta": 1e4}, 4096)
    assert plain.rope_parameters == {"rope_type": "default", "rope_theta": 1e4}
    assert (plain.max_position_embeddings, plain.max_model_len) == (4096, 4096)


def test_rope_override_keeps_the_checkpoints_other_keys():
    checkpoint = {
        "rope_type": "yarn",
        "rope_theta": 1e6,
        "partial_rotary_factor": 0.5,
        "factor": 2.0,
        "beta_fast": 8,
        "original_max_position_embeddings": 2048,
    }
    override = rope_override(
        Settings(model="m", rope_type="resonance_linear", rope_factor=4), checkpoint, 4096
    )
    params = override.rope_parameters
    assert params["partial_rotary_factor"] == 0.5 and params["rope_theta"] == 1e6
    assert params["rope_type"] == "resonance_linear" and params["factor"] == 4
    assert "beta_fast" not in params  # YaRN's parameter does not belong to linear scaling
    plain = rope_override(Settings(model="m", rope_type="none"), checkpoint, 4096)
    assert plain.rope_parameters == {
        "rope_type": "default",
        "rope_theta": 1e6,
        "partial_rotary_factor": 0.5,
    }


def test_max_model_len_beyond_factor_times_original_is_refused():
    settings = Settings(model="m", rope_type="resonance_yarn", rope_factor=2, max_model_len=9000)
    with pytest.raises(
        ValueError,
        match=r"max_model_len \(9000\) is longer than the served context \(8192 tokens: "
        r"rope_factor 2 x original_max_position_embeddings 4096\)",
    ):
        rope_override(settings, {}, 4096)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rope-factor", "0.5"], "--rope-factor: Input should be greater than or equal to 1"),
        (["--model", "x", "--rope-type", "resonance_yarn"], "rope_factor is required"),
        (
            ["--yarn-beta-fast", "1", "--yarn-beta-slow", "2"],
            "yarn_beta_fast (1.0) must be greater",
        ),
        (["--rope-type", "resonance_bogus"], "'resonance_llama3' (got 'resonance_bogus')"),
        (["--config", "/nonexistent/settings.yaml"], "config file /nonexistent/settings.yaml"),
        (["--port", "http"], "--port: Input should be a valid integer"),
        (["--model", "x", "--rope-type", "resonance", "--rope-factor", "4"], "no rope_factor"),
        (["--model", "x", "--rope-type", "none", "--rope-factor", "2"], "no rope_factor"),
        (["--model", "/no/such/checkpoint"], "no such file or directory: /no/such/checkpoint"),
        (["--model", "./missing-dir"], "no such file or directory: ./missing-dir"),
    ],
)
def test_bad_settings_stop_start_up_with_one_line(args, message):
    line = refusal(*args)
    assert line.startswith("resonance-serve: error: ") and "\n" not in line
    assert message in line


def test_a_refusal_is_one_line_on_stderr_and_no_traceback():
    """The one refusal run as a process: what the user sees is that line alone."""
    result = run_cli("--rope-factor", "0.5")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "resonance-serve: error: --rope-factor: Input should be greater than or equal to 1 "
        "(got '0.5')"
    )


def test_refused_combination_is_one_line_before_the_engine_starts(plain_checkpoint):
    line = refusal(
        "--model",
        str(plain_checkpoint),
        "--rope-type",
        "resonance_yarn",
        "--rope-factor",
        "2",
        "--max-model-len",
        "4096",
    )
    assert line.endswith("original_max_position_embeddings 256)")
