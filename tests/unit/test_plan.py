"""The engine plan: settings + the checkpoint's config -> what the engine is started with.

No engine runs here: each case is checked before vLLM would start.
"""

import dataclasses

import pytest
from transformers import AutoConfig

from rope_plugins.catalog import SERVABLE_TYPES
from server.model_source import DEMO_FILE, DEMO_NAME, ModelSource, demo_gguf, resolve_model
from server.plan import Platform, build_plan, kv_bytes_per_token
from server.settings import Settings
from tests.gguf_file import write_gguf
from tests.helpers import refusal
from tests.plans import MACHINE, GiB, folder, tiny_config, trained_with_scaling


def test_the_demos_plan(tmp_path):
    """Resonance-YaRN x4 over the demo's 8192 positions, float32, named for the demo."""
    gguf = demo_gguf()
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=DEMO_FILE)
    source = ModelSource(str(tmp_path), DEMO_NAME, "the demo", "float32")
    plan = build_plan(Settings(), source, config, MACHINE)
    args = plan.engine_args
    assert args["served_model_name"] == DEMO_NAME and args["dtype"] == "float32"
    rope = args["hf_overrides"]["rope_parameters"]
    assert rope["rope_type"] == "resonance_yarn" and rope["factor"] == 4.0
    assert rope["original_max_position_embeddings"] == 8192
    assert args["max_model_len"] == plan.info.max_model_len == 32768
    assert plan.info.trained_context == 8192
    # 30 layers x 3 KV heads x 64 x 2 (K and V) x 4 bytes; 8 sequences of 32K would need
    # 11.25 GiB, more than a quarter of the machine: 6 GiB, 4.27 sequences
    assert plan.kv_bytes_per_token == 30 * 3 * 64 * 2 * 4
    assert plan.kv_cache_gib == 6 and plan.environment["VLLM_CPU_KVCACHE_SPACE"] == "6"
    assert plan.kv_sequences == pytest.approx(6 * GiB / (32768 * 46080))


def test_a_gguf_files_plan(plain_checkpoint, tmp_path):
    gguf = write_gguf(plain_checkpoint, tmp_path / "tiny-chat.gguf")
    settings = Settings(model=str(gguf), rope_type="yarn", rope_factor=2, cache_dir=tmp_path)
    source = resolve_model(settings)  # converts it (once)
    assert source.dtype == "float32" and source.name == "tiny-chat"
    config = AutoConfig.from_pretrained(source.path)
    plan = build_plan(settings, source, config, MACHINE)
    assert plan.engine_args["served_model_name"] == "tiny-chat"
    assert plan.info.max_model_len == 512 and plan.info.rope["rope_type"] == "yarn"


@pytest.mark.parametrize("rope_type", SERVABLE_TYPES)
def test_a_folder_with_each_rope_type(rope_type):
    scaled = rope_type not in ("none", "resonance")
    settings = Settings(model="org/tiny", rope_type=rope_type, rope_factor=4 if scaled else None)
    plan = build_plan(settings, folder(), tiny_config(), MACHINE)
    rope = plan.engine_args["hf_overrides"]["rope_parameters"]
    assert rope["rope_type"] == ("default" if rope_type == "none" else rope_type)
    assert plan.info.max_model_len == (1024 if scaled else 256)
    assert plan.engine_args["max_model_len"] == plan.info.max_model_len


def test_the_checkpoints_own_rope_is_kept_without_flags():
    config = trained_with_scaling()
    plan = build_plan(Settings(model="org/tiny"), folder(), config, MACHINE)
    assert plan.engine_args["hf_overrides"] == {} and plan.engine_args["max_model_len"] is None
    assert plan.info.max_model_len == 1024 and plan.info.trained_context == 256


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"max_queued_tokens": 500, "rope_type": "yarn", "rope_factor": 4},
            "max_queued_tokens (500) must be at least the served context (1024",
        ),
        ({"max_model_len": 300}, "max_model_len (300) is longer than the checkpoint's context"),
        (
            {"cpu_kv_cache_space_gib": 0.001, "rope_type": "yarn", "rope_factor": 4096},
            "cannot hold one sequence of the served 1048576 tokens",
        ),
        ({"engine_args": {"no_such_argument": 1}}, "'no_such_argument' is not an engine argument"),
        ({"engine_args": {"max_model_len": 9}}, "'max_model_len' is set by the server; use --max"),
        ({"engine_args": {"hf_overrides": {}}}, "use --rope-type"),
        ({"lora_modules": ["no-path"]}, "'no-path' is not NAME=PATH"),
        ({"kv_cache_dtype": "fp8_e4m3"}, "fp8 KV cache only on x86 with AVX-512 or AMX"),
    ],
)
def test_what_cannot_be_served_is_refused_before_the_engine_starts(settings, message):
    avx2_only = Platform(cpu=True, memory_bytes=24 * GiB, fp8_kv_cache=False)
    with pytest.raises(ValueError) as refused:
        build_plan(Settings(model="org/tiny", **settings), folder(), tiny_config(), avx2_only)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_engine_args_pass_through_and_levers_reach_the_engine_arguments():
    settings = Settings(
        model="org/tiny",
        kv_cache_dtype="fp8",
        max_num_batched_tokens=512,
        long_prefill_token_threshold=128,
        engine_args={"block_size": 32, "speculative_config": {"method": "ngram"}},
        lora_modules=["a=/adapters/a"],
    )
    args = build_plan(settings, folder(), tiny_config(), MACHINE).engine_args
    assert args["kv_cache_dtype"] == "fp8" and args["max_num_batched_tokens"] == 512
    assert args["long_prefill_token_threshold"] == 128
    assert args["block_size"] == 32 and args["speculative_config"] == {"method": "ngram"}
    assert args["enable_lora"] is True
    compact = {"backend": "xgrammar", "disable_any_whitespace": True}
    assert args["structured_outputs_config"] == compact


def test_json_whitespace_is_compact_unless_asked_otherwise():
    def whitespace(**fields):
        settings = Settings(model="org/tiny", **fields)
        return build_plan(settings, folder(), tiny_config(), MACHINE).engine_args.get(
            "structured_outputs_config"
        )

    assert whitespace(compact_json=False) is None
    given = {"structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": False}}
    assert whitespace(engine_args=given) == given["structured_outputs_config"]


def test_the_kv_cache_counts_its_own_dtype():
    config = tiny_config()
    full = kv_bytes_per_token(config, "float32")
    assert full == 2 * 2 * 2 * 128 * 4
    assert kv_bytes_per_token(config, "bfloat16") == full // 2
    assert kv_bytes_per_token(config, "float32", "fp8") == full // 4
    settings = Settings(model="org/tiny", kv_cache_dtype="fp8", cpu_kv_cache_space_gib=1)
    fp8 = build_plan(settings, folder("float32"), config, MACHINE)
    settings = Settings(model="org/tiny", cpu_kv_cache_space_gib=1)
    plain = build_plan(settings, folder("float32"), config, MACHINE)
    assert fp8.kv_sequences == pytest.approx(4 * plain.kv_sequences)


def test_a_users_kv_cache_variable_is_kept():
    platform = Platform(cpu=True, memory_bytes=24 * GiB, environ={"VLLM_CPU_KVCACHE_SPACE": "3"})
    plan = build_plan(Settings(model="org/tiny"), folder(), tiny_config(), platform)
    assert plan.kv_cache_gib == 3


def test_engine_args_from_flags_environment_and_yaml(tmp_path, monkeypatch):
    from server.settings import load_settings

    flags = load_settings(
        [
            "--engine-arg",
            "block_size=32",
            "--engine-arg",
            'speculative_config={"method": "ngram", "num_speculative_tokens": 3}',
            "--engine-arg",
            "tokenizer_mode=slow",
        ]
    )
    assert flags.engine_args == {
        "block_size": 32,
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 3},
        "tokenizer_mode": "slow",
    }
    monkeypatch.setenv("RESONANCE_ENGINE_ARGS", '{"block_size": 64}')
    assert load_settings([]).engine_args == {"block_size": 64}
    monkeypatch.delenv("RESONANCE_ENGINE_ARGS")
    config = tmp_path / "s.yaml"
    config.write_text("engine_args:\n  swap_space: 2\n")
    assert load_settings(["--config", str(config)]).engine_args == {"swap_space": 2}


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--engine-arg", "bogus=1"], "engine_args: 'bogus' is not an engine argument of vLLM"),
        (["--engine-arg", "served_model_name=x"], "use --served-model-name"),
        (["--engine-arg", 'block_size="abc"'], "block_size: Input should be a valid integer"),
    ],
)
def test_a_bad_engine_argument_stops_start_up_in_one_line(plain_checkpoint, flags, line):
    last = refusal("--model", str(plain_checkpoint), "--port", "0", *flags)
    assert last.startswith("resonance-serve: error: ") and line in last


def test_every_engine_setting_is_an_argument_of_vllms_engine(plain_checkpoint):
    """Each setting handed to AsyncEngineArgs by name must be one of its fields (vLLM renames)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from server.settings import ENGINE_FIELDS

    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    assert set(ENGINE_FIELDS) <= fields, set(ENGINE_FIELDS) - fields
    source = ModelSource(str(plain_checkpoint), None, "a folder", "float32")
    settings = Settings(model=str(plain_checkpoint), max_num_batched_tokens=512)
    plan = build_plan(settings, source, tiny_config(), MACHINE)
    AsyncEngineArgs(**plan.engine_args)  # every key the plan writes is accepted


# ------------------------------------------------------------ several processes, several nodes
TWO_CORES = dataclasses.replace(MACHINE, cores=(0, 1), numa_nodes=1)


@pytest.mark.parametrize(
    ("parallel", "machine", "binding"),
    [
        ({"tensor_parallel_size": 2}, TWO_CORES, "0|1"),
        ({"pipeline_parallel_size": 2}, TWO_CORES, "0|1"),
        (
            {"tensor_parallel_size": 2},
            dataclasses.replace(TWO_CORES, cores=(0, 2, 4, 6)),
            "0,2|4,6",
        ),
        (
            {
                "tensor_parallel_size": 2,
                "pipeline_parallel_size": 2,
                "nnodes": 2,
                "master_addr": "127.0.0.1",
            },
            TWO_CORES,
            "0|1",
        ),  # two ranks on each node
        ({"tensor_parallel_size": 2}, dataclasses.replace(TWO_CORES, numa_nodes=2), None),
        (
            {"tensor_parallel_size": 2},
            dataclasses.replace(TWO_CORES, environ={"VLLM_CPU_OMP_THREADS_BIND": "1|0"}),
            None,
        ),  # the user's own wins
        (
            {"pipeline_parallel_size": 2, "nnodes": 2, "master_addr": "127.0.0.1"},
            TWO_CORES,
            "0,1",
        ),  # one rank on each node: every core, as one process
        ({}, TWO_CORES, "0,1"),
        ({}, dataclasses.replace(TWO_CORES, environ={"VLLM_CPU_OMP_THREADS_BIND": "auto"}), None),
    ],
)
def test_engine_threads_bind_to_every_core_split_among_the_ranks(parallel, machine, binding):
    settings = Settings(model="org/tiny", **parallel)
    plan = build_plan(settings, folder(), tiny_config(), machine)
    assert plan.environment.get("VLLM_CPU_OMP_THREADS_BIND") == binding
    for name, value in parallel.items():
        assert plan.engine_args[name] == value


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tensor_parallel_size": 4}, "4 engine ranks on this machine"),
        ({"pipeline_parallel_size": 2, "enforce_eager": True}, "drop --enforce-eager"),
        ({"distributed_executor_backend": "ray"}, "does not support Ray"),
    ],
)
def test_parallel_settings_the_cpu_build_cannot_run_are_refused(fields, message):
    settings = Settings(model="org/tiny", **fields)
    with pytest.raises(ValueError, match=message):
        build_plan(settings, folder(), tiny_config(), TWO_CORES)


def test_node_settings_are_checked():
    with pytest.raises(ValueError, match="node_rank"):
        Settings(model="org/tiny", nnodes=2, node_rank=2, master_addr="127.0.0.1")
    with pytest.raises(ValueError, match="needs master_addr"):
        Settings(model="org/tiny", nnodes=2)
