"""Agents on the demo, served as `make serve` serves it (no tool flags): the clients and agent
frameworks people use, each through a whole tool loop (call, result, final answer).

A 135M model rarely chooses a tool by itself, so the first turn forces the call
(``tool_choice`` required or named); the loop itself (the call parsed, its result sent back in
the history, an answer to it) is what these tests hold. llama-index's OpenAI integration is not
here: it requires openai<3, and openai-agents (and pydantic-ai) openai 3, in one environment.
"""

import json

import anthropic
import httpx
import pytest
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

from server.model_source import DEMO_NAME

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
QUESTION = "What is the weather in Paris? Use the tool."


class City(BaseModel):
    name: str
    country: str


@pytest.fixture(scope="module")
def base_url(demo_server) -> str:
    return f"{demo_server.base_url}/v1"


@pytest.fixture(scope="module")
def openai_client(base_url) -> OpenAI:
    return OpenAI(base_url=base_url, api_key="none", max_retries=0)


def history_with_a_call() -> list[dict]:
    """developer, assistant tool_calls with content null, and the tool's result, as agents
    send them."""
    return [
        {"role": "developer", "content": "You answer with the tool's result."},
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees"},
    ]


# ------------------------------------------------------------------ the chat API's tool loop
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tools", [True, False])
def test_the_second_turn_of_a_tool_loop_is_answered(openai_client, stream, tools):
    """The request that was a 400 ("3 validation errors for ChatCompletionRequest")."""
    extra = {"tools": [WEATHER]} if tools else {}
    reply = openai_client.chat.completions.create(
        model=DEMO_NAME,
        messages=history_with_a_call(),
        max_tokens=24,
        temperature=0,
        stream=stream,
        **extra,
    )
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
    else:
        text = reply.choices[0].message.content or ""
    assert text.strip()
    if not tools:  # the model's own template: the answer uses the result (seen: "Sunny, 21")
        assert "21" in text or "unny" in text, text


def test_required_tool_choice_in_48_tokens_gives_a_parsed_call(openai_client):
    """openai-agents' required choice with its 48-token budget: compact JSON closes in time."""
    reply = openai_client.chat.completions.create(
        model=DEMO_NAME,
        messages=[{"role": "user", "content": QUESTION}],
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=48,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls  # (the model may make several: parallel calls are allowed)
    for call in choice.message.tool_calls:
        assert call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments), dict)


def test_auto_is_served_without_flags(openai_client, demo_server):
    """tool_choice auto works on the plain start: the banner names the parser and template."""
    assert "tool calls: parser hermes" in demo_server.output()
    reply = openai_client.chat.completions.create(
        model=DEMO_NAME,
        messages=[{"role": "user", "content": QUESTION}],
        tools=[WEATHER],
        tool_choice="auto",
        max_tokens=64,
        temperature=0,
    )
    assert reply.choices[0].finish_reason in ("stop", "tool_calls", "length")


# ------------------------------------------------------------------ the Responses API
def test_responses_create_stream_and_parse(openai_client):
    response = openai_client.responses.create(
        model=DEMO_NAME,
        input="What is the capital of France?",
        max_output_tokens=24,
        temperature=0,
    )
    assert "Paris" in response.output_text
    with openai_client.responses.stream(
        model=DEMO_NAME,
        input="What is the capital of France?",
        max_output_tokens=24,
        temperature=0,
    ) as stream:
        streamed = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        assert streamed == stream.get_final_response().output_text == response.output_text
    parsed = openai_client.responses.parse(
        model=DEMO_NAME,
        input="Name a city in France.",
        text_format=City,
        max_output_tokens=60,
        temperature=0,
    )
    assert isinstance(parsed.output_parsed, City)


def test_responses_function_call_loop_and_previous_response_id(openai_client):
    tool = {"type": "function", **WEATHER["function"]}
    first = openai_client.responses.create(
        model=DEMO_NAME,
        input=QUESTION,
        tools=[tool],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=48,
        temperature=0,
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21"}
    second = openai_client.responses.create(
        model=DEMO_NAME,
        input=[result],
        previous_response_id=first.id,
        tools=[tool],
        max_output_tokens=32,
        temperature=0,
    )
    assert second.output_text.strip() and second.status in ("completed", "incomplete")


# ------------------------------------------------------------------ the Anthropic Messages API
def test_anthropic_messages_create_stream_and_a_tool_loop(demo_server):
    client = anthropic.Anthropic(base_url=demo_server.base_url, api_key="none", max_retries=0)
    question = {"role": "user", "content": "What is the capital of France?"}
    greedy = {"extra_body": {"temperature": 0}}  # (this SDK version takes no temperature)
    message = client.messages.create(model=DEMO_NAME, max_tokens=24, messages=[question], **greedy)
    assert "Paris" in message.content[0].text
    with client.messages.stream(
        model=DEMO_NAME, max_tokens=24, messages=[question], **greedy
    ) as stream:
        assert "".join(stream.text_stream) == message.content[0].text
    tool = {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": WEATHER["function"]["parameters"],
    }
    ask = {"role": "user", "content": QUESTION}
    first = client.messages.create(
        model=DEMO_NAME,
        max_tokens=48,
        tools=[tool],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=[ask],
        **greedy,
    )
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and use.name == "get_weather"
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 degrees"}
    second = client.messages.create(
        model=DEMO_NAME,
        max_tokens=32,
        **greedy,
        tools=[tool],
        messages=[
            ask,
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [result]},
        ],
    )
    assert second.content and second.stop_reason in ("end_turn", "max_tokens", "tool_use")


# ------------------------------------------------------------------ agent frameworks
def test_openai_agents_with_the_responses_and_the_chat_models(base_url):
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    calls = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return "Sunny, 21 degrees"

    client = AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0)
    for model in (
        OpenAIResponsesModel(model=DEMO_NAME, openai_client=client),
        OpenAIChatCompletionsModel(model=DEMO_NAME, openai_client=client),
    ):
        agent = Agent(
            name="weather",
            instructions="Answer with the tool's result.",
            tools=[get_weather],
            model=model,
            model_settings=ModelSettings(tool_choice="required", max_tokens=48, temperature=0),
        )
        before = len(calls)
        result = Runner.run_sync(agent, QUESTION, max_turns=4)
        assert len(calls) > before, f"{type(model).__name__}: the tool was not called"
        assert isinstance(result.final_output, str) and result.final_output.strip()
        typed = Agent(
            name="city",
            instructions="Name a city and its country.",
            model=model,
            output_type=City,
            model_settings=ModelSettings(max_tokens=60, temperature=0),
        )
        assert isinstance(Runner.run_sync(typed, "A city in France?").final_output, City)


def test_langchain_bind_tools_with_auto_and_a_tool_loop(base_url):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=DEMO_NAME, base_url=base_url, api_key="none", temperature=0, max_tokens=48
    )
    auto = llm.bind_tools([WEATHER], tool_choice="auto").invoke(QUESTION)
    assert auto.content or auto.tool_calls
    forced = llm.bind_tools([WEATHER], tool_choice="get_weather")
    ask = HumanMessage(QUESTION)
    first = forced.invoke([ask])
    (call,) = first.tool_calls
    result = ToolMessage("Sunny, 21 degrees", tool_call_id=call["id"])
    final = llm.bind_tools([WEATHER]).invoke([ask, first, result])
    assert final.content.strip() or final.tool_calls


def test_pydantic_ai_text_a_tool_and_a_structured_output(base_url):
    """A tool as pydantic-ai's output function: the model must call it (pydantic-ai asks for a
    required tool choice), the function runs and its result is the run's output."""
    from pydantic_ai import Agent, ModelSettings
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(DEMO_NAME, provider=OpenAIProvider(base_url=base_url, api_key="none"))
    settings = ModelSettings(max_tokens=48, temperature=0)
    text = Agent(model, model_settings=settings).run_sync("What is the capital of France?")
    assert "Paris" in text.output
    calls = []

    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"Sunny in {city}"

    weather = Agent(model, output_type=get_weather, model_settings=settings).run_sync(QUESTION)
    assert calls and weather.output == f"Sunny in {calls[-1]}"
    typed = Agent(model, output_type=City, model_settings=ModelSettings(max_tokens=80))
    assert isinstance(typed.run_sync("A city in France?").output, City)


def test_litellm_completion_stream_tools_and_json_schema(base_url):
    import litellm

    common = {
        "model": f"openai/{DEMO_NAME}",
        "api_base": base_url,
        "api_key": "none",
        "temperature": 0,
        "max_tokens": 24,
    }
    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = litellm.completion(messages=question, **common)
    assert "Paris" in reply.choices[0].message.content
    chunks = litellm.completion(messages=question, stream=True, **common)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    called = litellm.completion(
        messages=[{"role": "user", "content": QUESTION}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        **{**common, "max_tokens": 48},
    )
    assert called.choices[0].message.tool_calls[0].function.name == "get_weather"
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": City.model_json_schema()},
    }
    typed = litellm.completion(
        messages=[{"role": "user", "content": "A city in France?"}],
        response_format=schema,
        **{**common, "max_tokens": 60},
    )
    City.model_validate_json(typed.choices[0].message.content)


def test_the_demo_health_is_fine_after_the_agents(demo_server):
    assert httpx.get(f"{demo_server.base_url}/health").status_code == 200
