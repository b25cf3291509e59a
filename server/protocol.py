"""Schemas of the OpenAI API as this server speaks it.

Requests are validated by pydantic. Responses are built as plain dicts (`server.responses`),
so nothing is validated per token; their models here describe them in the OpenAPI schema.
"""

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core.core_schema import ValidationInfo

MAX_LOGPROBS = 20
MAX_STOP_SEQUENCES = 16
MAX_BAD_WORDS = 256
MAX_TOOLS = 128
# A choice constraint's options: 100,000 of them took the constraint compiler minutes.
MAX_CHOICES = 1024
INT64 = {"ge": -(2**63), "le": 2**63 - 1}
TokenIds = list[Annotated[int, Field(ge=0)]]


def _encodable(value: str) -> str:
    """JSON may carry lone surrogates (\\ud800), which no tokenizer or UTF-8 encoder takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_encodable)]


STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False
    continuous_usage_stats: bool = False  # usage in every chunk (vLLM's extension)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Text = "response"
    description: Text | None = None
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: free text, any JSON object, or JSON of a schema."""

    model_config = STRICT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a json_schema object")
        return self


class StructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs`` field, as vLLM's own server takes it (one constraint)."""

    model_config = STRICT
    json_schema: dict[str, Any] | Text | None = Field(None, alias="json")
    regex: Text | None = None
    choice: list[Text] | None = Field(None, min_length=1, max_length=MAX_CHOICES)
    grammar: Text | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: Text | None = None

    @model_validator(mode="after")
    def _one_constraint(self) -> "StructuredOutputs":
        given = [self.json_schema, self.regex, self.choice, self.grammar, self.json_object]
        if sum(value is not None for value in given) != 1:
            raise ValueError("give exactly one of json, regex, choice, grammar, json_object")
        return self


class SamplingRequest(BaseModel):
    """The fields completions and chat share; unknown fields are a 400, as at OpenAI."""

    model_config = STRICT

    model: Text
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: int | None = Field(None, **INT64)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    # token id (as a string, as OpenAI sends it) -> bias added to its logit
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    stop_token_ids: TokenIds | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    min_tokens: int = Field(0, ge=0)
    bad_words: list[Text] | None = Field(None, max_length=MAX_BAD_WORDS)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    truncate_prompt_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    # Accepted and ignored: they cannot change what is generated.
    user: Text | None = None
    store: bool | None = None
    metadata: dict[str, Text] | None = None
    service_tier: Text | None = None
    # Added to every body by the cache-aware routers (vllm-router, sglang-router): SGLang's
    # name for include_stop_str_in_output, and hidden states, which this server cannot return.
    no_stop_trim: bool = False
    return_hidden_states: bool = False
    # Refused with a reason (vLLM's V1 engine has no best_of).
    best_of: int | None = None

    @field_validator("return_hidden_states")
    @classmethod
    def _no_hidden_states(cls, value: bool) -> bool:
        if value:
            raise ValueError("return_hidden_states is not supported: this server returns text")
        return value

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None) -> int | None:
        if value is not None and value > 1:
            raise ValueError("best_of is not supported (vLLM's engine has no best_of); use n")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        for text in [stop] if isinstance(stop, str) else stop or []:
            if not text:
                raise ValueError("stop strings must not be empty")
            _encodable(text)
        return stop


class CompletionRequest(SamplingRequest):
    prompt: Text | list[Text] | TokenIds | list[TokenIds]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: Text | None = None
    # vLLM's: each choice carries its token ids, its first chunk the prompt's too
    return_token_ids: bool = False

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix is not supported (a LLaMA chat model has no fill-in-middle)")
        return value


class ContentPart(BaseModel):
    """A part of a message's content: text only (the served models read no images or audio)."""

    model_config = ConfigDict(extra="allow")
    type: Text
    text: Text | None = None

    @model_validator(mode="after")
    def _text_only(self) -> "ContentPart":
        if self.type != "text":
            raise ValueError(
                f"content parts of type {self.type!r} are not supported: this model takes text only"
            )
        if self.text is None:
            raise ValueError("a text part needs its text")
        return self


class FunctionCall(BaseModel):
    model_config = STRICT
    name: Text
    arguments: Text | dict[str, Any]  # the JSON string OpenAI sends (some clients an object)


class ToolCall(BaseModel):
    model_config = STRICT
    id: Text
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None
    name: Text | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: Text | None = None  # a tool's result: which call it answers

    @model_validator(mode="after")
    def _content_where_needed(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class FunctionDefinition(BaseModel):
    model_config = STRICT
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = STRICT
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = STRICT
    name: Text


class NamedToolChoice(BaseModel):
    model_config = STRICT
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # Chat-template controls, as vLLM's server has them
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    # Reasoning-parser switches the routers add (defaults: on). Accepted and ignored: this
    # server has no reasoning parser, so the text is returned as generated.
    separate_reasoning: bool = True
    stream_reasoning: bool = True
    include_reasoning: bool = True

    @field_validator("tool_choice")
    @classmethod
    def _tools_given(cls, choice: Any, info: ValidationInfo) -> Any:
        tools = info.data.get("tools")
        if choice not in (None, "none") and not tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, NamedToolChoice):
            names = [tool.function.name for tool in tools]
            if choice.function.name not in names:
                raise ValueError(f"tool_choice names {choice.function.name!r}, not among the tools")
        return choice

    @field_validator("continue_final_message")
    @classmethod
    def _continues(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("add_generation_prompt", True):
            raise ValueError("continue_final_message needs add_generation_prompt false")
        return value

    @property
    def effective_tool_choice(self) -> str | NamedToolChoice:
        """OpenAI's default: 'auto' when tools are given, else 'none'."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"


class TokenizeRequest(BaseModel):
    model_config = STRICT
    model: Text | None = None
    prompt: Text
    add_special_tokens: bool = True


class LoadLoraRequest(BaseModel):
    model_config = STRICT
    lora_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/-]{1,128}$")]
    lora_path: Text


class UnloadLoraRequest(BaseModel):
    model_config = STRICT
    lora_name: Text
    lora_int_id: int | None = None  # vLLM's server accepts it; the name decides


class DetokenizeRequest(BaseModel):
    model_config = STRICT
    model: Text | None = None
    tokens: TokenIds


# ------------------------------------------------------------------ responses (documentation)
class PromptTokensDetails(BaseModel):
    cached_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None
    stop_reason: int | str | None = None
    prompt_token_ids: list[int] | None = None  # with return_token_ids
    token_ids: list[int] | None = None  # with return_token_ids


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] = []


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None
    finish_reason: str | None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    parent: str | None = None  # an adapter's base model
    max_model_len: int
    rope_parameters: dict[str, Any]
    trained_context: int
    rope_policy: Literal["per-request", "static"]


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionResponse(BaseModel):
    version: str
    vllm: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def generation_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of a generation route: JSON, or events when streamed.

    Documented, not enforced (the route has no response_model): nothing is validated twice,
    and a request whose client went away returns nothing at all.
    """
    return {
        200: {
            "model": model,
            "content": {"text/event-stream": {}},
            "description": "The response, or server-sent events of its chunks",
        },
        "4XX": {"model": ErrorResponse, "description": "OpenAI error body"},
    }
