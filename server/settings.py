"""All server settings, declared once: command-line flags, RESONANCE_* variables, a YAML file.

Priority: flags, then environment, then the YAML file named by ``--config`` (or
RESONANCE_CONFIG), then the defaults below. YAML keys are the field names (``rope_type: yarn``).
"""

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from rope_plugins import catalog
from rope_plugins.catalog import SERVABLE_TYPES

RopeType = Literal[SERVABLE_TYPES]  # type: ignore[valid-type]
DEMO_ROPE_TYPE, DEMO_FACTOR = "resonance_yarn", 4.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RESONANCE_", extra="forbid", validate_default=True
    )

    config: Path | None = Field(None, description="YAML file of settings (keys: field names)")

    # --- model and network
    model: str | None = Field(
        None,
        description="Local checkpoint directory, LLaMA-family .gguf file or Hugging Face model "
        "id; none serves the demo (SmolLM2-135M-Instruct, Resonance-YaRN x4 to 32K tokens)",
    )
    served_model_name: str | None = Field(None, description="Name clients use (default: --model)")
    host: str = Field("127.0.0.1", description="Address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "resonance-serve",
        description="Where the demo and .gguf models are converted once and kept",
    )

    # --- RoPE scaling, applied to the unmodified checkpoint as a config override
    rope_type: RopeType | None = Field(
        None, description="RoPE scaling; unset: as the checkpoint says ('none': plain RoPE)"
    )
    rope_factor: float | None = Field(None, ge=1, description="Context extension factor")
    original_max_position_embeddings: int | None = Field(
        None, gt=0, description="Trained context length (default: the checkpoint's)"
    )
    yarn_beta_fast: float = Field(32.0, gt=0, description="YaRN ramp boundary, fast end")
    yarn_beta_slow: float = Field(1.0, gt=0, description="YaRN ramp boundary, slow end")
    llama3_low_freq_factor: float = Field(1.0, gt=0, description="llama3 low-frequency factor")
    llama3_high_freq_factor: float = Field(4.0, gt=0, description="llama3 high-frequency factor")
    max_model_len: int | None = Field(
        None, gt=0, description="Longest prompt + output (default: factor x original)"
    )
    rope_policy: Literal["per-request", "static"] | None = Field(
        None,
        description="per-request: a request that fits the trained context runs with the "
        "checkpoint's unscaled RoPE, a longer one with the scaling (one engine); static: "
        "every request with the scaling; unset: per-request for a Resonance scaling set "
        "here on an unscaled checkpoint, static otherwise",
    )

    # --- engine, passed through to vLLM
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights and activations (the demo uses float32)"
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per model replica")
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline stages (across nodes)")
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        None, description="vLLM's executor for several GPUs or nodes (ray: across nodes)"
    )
    nnodes: int = Field(1, ge=1, description="Machines one model spans (vLLM's multi-node mp)")
    node_rank: int = Field(
        0, ge=0, description="This machine's rank: 0 serves HTTP, the others run engine workers"
    )
    master_addr: str | None = Field(None, description="Address of node 0 (multi-node)")
    master_port: int | None = Field(None, ge=1, le=65535, description="Port on node 0")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU memory for vLLM")
    cpu_kv_cache_space_gib: float | None = Field(
        None, gt=0, description="KV cache size on the CPU build (VLLM_CPU_KVCACHE_SPACE)"
    )
    max_num_seqs: int | None = Field(None, ge=1, description="Most sequences running at once")
    enable_chunked_prefill: bool | None = Field(None, description="Split long prefills")
    enable_prefix_caching: bool | None = Field(None, description="Reuse KV of shared prefixes")
    enforce_eager: bool = Field(False, description="No CUDA graphs / compilation")
    seed: int = Field(0, description="Engine random seed")
    kv_cache_dtype: str = Field(
        "auto", description="KV-cache element type: auto (the model's), fp8, fp8_e4m3, fp8_e5m2"
    )
    quantization: str | None = Field(
        None, description="Weight quantization method (vLLM's names: fp8, awq, gptq, ...)"
    )
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="Tokens per engine step (bounds a long prefill's chunk)"
    )
    long_prefill_token_threshold: int | None = Field(
        None, ge=0, description="A prefill longer than this counts as long (chunked prefill)"
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other vLLM engine argument: repeat --engine-arg KEY=VALUE (VALUE read "
        "as JSON where it parses); RESONANCE_ENGINE_ARGS and YAML engine_args as an object",
    )

    # --- LoRA adapters (vLLM's)
    lora_modules: list[str] = Field(
        default_factory=list,
        description="Adapter to serve as a model of its own: repeat --lora-module NAME=PATH",
    )
    max_lora_rank: int | None = Field(None, ge=1, description="Largest adapter rank")
    max_loras: int | None = Field(None, ge=1, description="Adapters in one engine step")
    allow_runtime_lora: bool = Field(
        False, description="Allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")

    # --- chat
    chat_template: Path | None = Field(
        None, description="Jinja chat template file to use instead of the checkpoint's"
    )
    tool_call_parser: str | None = Field(
        None,
        description="vLLM tool-call parser for tool_choice 'auto' (hermes, llama3_json, "
        "pythonic, ...); unset: the one the chat template's format needs (with a Hermes tool "
        "template for ChatML and LLaMA2-Chat templates that render none); 'none': no parser. "
        "Named and required choices need none",
    )

    # --- access and limits
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted API keys (repeat --api-key; RESONANCE_API_KEYS comma-separated); "
        "none: no authentication",
    )
    api_key_file: Path | None = Field(None, description="File of API keys, one per line")
    api_key_for_probes: bool = Field(
        False, description="Require a key for /health and /metrics too"
    )
    max_concurrent_requests: int = Field(
        256, ge=1, description="Generation requests in flight; more get 429"
    )
    max_concurrent_sequences: int = Field(
        1024, ge=1, description="Engine sequences (n x prompts) in flight; more get 429"
    )
    max_queued_tokens: int | None = Field(
        None,
        ge=1,
        description="Tokens in flight, prompt plus most output of every sequence; more get 429 "
        "(default: 16 x max_model_len)",
    )
    max_prompts_per_request: int = Field(32, ge=1, description="Prompts in one request")
    max_sequences_per_request: int = Field(64, ge=1, description="n x prompts in one request")
    max_request_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body; larger get 413"
    )
    max_n: int = Field(16, ge=1, description="Largest n (choices per prompt)")
    request_timeout: float | None = Field(
        600.0, gt=0, description="Seconds a request may take before it is aborted (504)"
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a connection has to send a request's headers"
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a request has to send its whole body"
    )
    structured_output_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds a response_format, grammar or tool schema may take to "
        "compile before the request is refused",
    )
    liveness_timeout: float = Field(
        120.0,
        gt=0,
        description="/health fails (503) when the engine has held requests this many seconds "
        "without finishing a step: a wedged engine gets restarted, while one prefill step (a "
        "chunk of --max-num-batched-tokens) takes far less",
    )
    lora_load_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds a LoRA adapter may take to load (--allow-runtime-lora); past "
        "them the load is refused and undone",
    )
    responses_store_size: int = Field(
        1000,
        ge=0,
        description="Responses kept in memory for previous_response_id (per API key, the "
        "oldest dropped first, none across restarts); 0 keeps none",
    )
    compact_json: bool = Field(
        True,
        description="JSON constraints (response_format, forced tool calls) allow no free "
        "whitespace, so answers close within small budgets (vLLM's structured_outputs_config "
        "disable_any_whitespace; engine-wide in vLLM 0.32); --no-compact-json allows any",
    )
    constraint_compiler: Literal["eager", "lazy"] = Field(
        "eager",
        description="Start the constraint compiler process with the engine (eager), or at "
        "the first request with a constraint (lazy: a faster start, a slower first one)",
    )
    max_connections: int = Field(
        1024, ge=1, description="Open connections; more are closed at once"
    )
    drain_timeout: float = Field(
        30.0, ge=0, description="Seconds in-flight requests get to finish after SIGTERM"
    )

    @field_validator("engine_args", mode="before")
    @classmethod
    def _engine_arg_values(cls, value: Any) -> Any:
        """Flags give every value as text: read each as JSON where it parses."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("engine_args must be a JSON object") from None
        if not isinstance(value, dict):
            return value
        return {str(key): _json_or_text(item) for key, item in value.items()}

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("chat_template")
    @classmethod
    def _template_readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("tool_call_parser")
    @classmethod
    def _known_parser(cls, value: str | None) -> str | None:
        if value not in (None, "none"):  # vLLM's parsers are imported only when asked for (15 s)
            from server.tools import parser_class

            parser_class(value)  # a one-line error naming vLLM's parsers
        return value

    @field_validator("model")
    @classmethod
    def _local_model_exists(cls, value: str | None) -> str | None:
        """A path (not a hub id of the form org/name) must exist: say so, not what the hub says."""
        if value is None:
            return value
        path = Path(value).expanduser()
        looks_local = value.startswith(("/", ".", "~")) or value.count("/") > 1
        looks_local = looks_local or value.endswith(".gguf")
        if looks_local and not path.exists():
            raise ValueError(f"no such file or directory: {value}")
        return str(path) if looks_local else value

    def accepted_api_keys(self) -> list[str]:
        """The keys from the settings and from ``api_key_file`` (blank lines and # skipped)."""
        keys = list(self.api_keys)
        if self.api_key_file is not None:
            try:
                lines = self.api_key_file.read_text().splitlines()
            except OSError as error:
                raise ValueError(f"api_key_file {self.api_key_file}: {error.strerror}") from None
            keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        return keys

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, YamlFileSource(settings_cls)

    @model_validator(mode="after")
    def _check_nodes(self) -> "Settings":
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank ({self.node_rank}) must be below nnodes ({self.nnodes})")
        if self.nnodes > 1 and not self.master_addr:
            raise ValueError("nnodes > 1 needs master_addr, the address of node 0")
        return self

    @model_validator(mode="after")
    def _check_rope(self) -> "Settings":
        if self.yarn_beta_fast <= self.yarn_beta_slow:
            raise ValueError(
                f"yarn_beta_fast ({self.yarn_beta_fast}) must be greater than "
                f"yarn_beta_slow ({self.yarn_beta_slow})"
            )
        rope_type = self.effective_rope_type
        if rope_type is None:
            return self
        if catalog.takes_factor(rope_type) and self.effective_factor is None:
            raise ValueError(f"rope_factor is required for rope_type {rope_type!r}")
        if not catalog.takes_factor(rope_type) and self.rope_factor is not None:
            raise ValueError(
                f"rope_type {rope_type!r} extends nothing and takes no rope_factor; "
                "for a longer context use a scaled type such as resonance_yarn"
            )
        return self

    @property
    def is_demo(self) -> bool:
        return self.model is None

    @property
    def effective_rope_type(self) -> str | None:
        if self.rope_type is None and self.is_demo:
            return DEMO_ROPE_TYPE
        return self.rope_type

    @property
    def effective_factor(self) -> float | None:
        if self.rope_factor is None and self.is_demo and self.rope_type is None:
            return DEMO_FACTOR
        return self.rope_factor


def _json_or_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


# Settings handed to vLLM's engine as the engine argument of the same name.
ENGINE_FIELDS = (
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "distributed_executor_backend",
    "nnodes",
    "node_rank",
    "master_addr",
    "master_port",
    "gpu_memory_utilization",
    "max_num_seqs",
    "enable_chunked_prefill",
    "enable_prefix_caching",
    "enforce_eager",
    "seed",
    "kv_cache_dtype",
    "quantization",
    "max_num_batched_tokens",
    "long_prefill_token_threshold",
    "max_lora_rank",
    "max_loras",
)


class YamlFileSource(PydanticBaseSettingsSource):
    """The YAML file whose path the higher-priority sources (flags, environment) gave."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("config")
        if not path:
            return {}
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as error:
            raise ValueError(f"config file {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ValueError(f"config file {path} is not valid YAML: {error}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of setting: value")
        return {str(key).replace("-", "_"): value for key, value in data.items()}


def load_settings(argv: list[str] | None) -> Settings:
    """Settings from flags (``argv``), the environment and the YAML file."""
    argv, engine_args = _engine_arg_flags(sys.argv[1:] if argv is None else argv)
    cli = CliSettingsSource(
        Settings,
        cli_parse_args=argv,
        cli_prog_name="resonance-serve",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
        cli_avoid_json=True,
        cli_shortcuts={"api-keys": "api-key", "lora-modules": "lora-module"},
    )
    flags = {"engine_args": engine_args} if engine_args else {}
    return Settings(_cli_settings_source=cli, **flags)


def _engine_arg_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The repeated ``--engine-arg KEY=VALUE`` flags, taken out of ``argv`` as they are.

    pydantic-settings splits a dict flag's value at every comma, which a JSON value (vLLM's
    ``speculative_config``) has; so these flags are read here, and the rest by pydantic.
    """
    rest, pairs = [], {}
    arguments = iter(argv)
    for argument in arguments:
        if argument in ("--engine-arg", "--engine-args"):
            value = next(arguments, "")
        elif argument.startswith(("--engine-arg=", "--engine-args=")):
            value = argument.partition("=")[2]
        else:
            rest.append(argument)
            continue
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise ValueError(f"--engine-arg takes KEY=VALUE (got {value!r})")
        pairs[key.replace("-", "_")] = text
    return rest, pairs
