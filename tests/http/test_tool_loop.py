"""The second turn of a tool loop: an assistant's tool_calls and the tool's result in the
history, with and without tools, for every tool_choice, whole and streamed (a 400 before)."""

import json

import httpx
import pytest

from harness.client import sse_data
from tests.app_server import app_server
from tests.http.conftest import fake_engine

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] or '' }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def history(arguments) -> list[dict]:
    return [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]


@pytest.fixture(scope="module")
def hermes(tokenizer, tmp_path_factory):
    """ChatML (a template that renders tool messages, as the demo's does) and vLLM's parser."""
    template = tmp_path_factory.mktemp("template") / "chatml.jinja"
    template.write_text(CHATML)
    engine = fake_engine(tokenizer)
    with app_server(engine, tool_call_parser="hermes", chat_template=template) as app:
        yield app


@pytest.mark.parametrize("arguments", ['{"city": "Paris"}', {"city": "Paris"}])
@pytest.mark.parametrize(
    "choice",
    [None, "none", "auto", "required", {"type": "function", "function": {"name": "get_weather"}}],
)
@pytest.mark.parametrize("stream", [False, True])
def test_the_second_turn_of_a_tool_loop_is_served(hermes, arguments, choice, stream):
    body = {"model": "fake-model", "messages": history(arguments), "max_tokens": 8}
    body |= {"stream": stream, "tools": TOOLS}
    if choice is not None:
        body["tool_choice"] = choice
    response = httpx.post(f"{hermes.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    seen = [s for rid, s in hermes.engine.seen.items() if rid.startswith("chatcmpl")][-1]
    prompt = hermes.engine.tokenizer.decode(seen.token_ids)
    assert "Sunny, 21 C" in prompt  # the tool's result reached the model


def test_the_history_without_tools_is_served_too(hermes):
    body = {"model": "fake-model", "messages": history('{"city": "Paris"}'), "max_tokens": 4}
    url = f"{hermes.base_url}/v1/chat/completions"
    assert httpx.post(url, json=body, timeout=30).status_code == 200


def test_deeply_nested_arguments_are_a_400_not_a_500(hermes):
    deep = "[" * 5000 + "]" * 5000
    body = {"model": "fake-model", "messages": history(deep), "tools": TOOLS, "max_tokens": 4}
    response = httpx.post(f"{hermes.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages"
    json.dumps(response.json())


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def default_start(tokenizer):
    """No --tool-call-parser: the tiny LLaMA2-Chat template renders no tools."""
    with app_server(fake_engine(tokenizer)) as app:
        yield app


def test_auto_works_without_flags_on_a_template_that_renders_no_tools(default_start):
    default_start.engine.faults.reply = CALL
    body = {"model": "fake-model", "messages": history('{"city": "Paris"}')[:1], "tools": TOOLS}
    url = f"{default_start.base_url}/v1/chat/completions"
    whole = httpx.post(url, json=body | {"max_tokens": 300}, timeout=30).json()
    (choice,) = whole["choices"]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    seen = list(default_start.engine.seen.values())[-1]
    prompt = default_start.engine.tokenizer.decode(seen.token_ids)
    assert "<tools>" in prompt and '"get_weather"' in prompt  # the tool template was used
    with httpx.stream("POST", url, json=body | {"max_tokens": 300, "stream": True}) as stream:
        events = [json.loads(e) for e in sse_data(stream.iter_lines())[:-1]]
    deltas = [c["choices"][0]["delta"] for c in events if c["choices"]]
    arguments = "".join(
        call["function"].get("arguments", "") for d in deltas for call in d.get("tool_calls", [])
    )
    assert json.loads(arguments) == {"city": "Paris"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_chat_without_tools_renders_with_the_models_own_template(default_start):
    default_start.engine.faults.reply = None
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    httpx.post(f"{default_start.base_url}/v1/chat/completions", json=body, timeout=30)
    seen = list(default_start.engine.seen.values())[-1]
    assert default_start.engine.tokenizer.decode(seen.token_ids) == "<s>[INST] Hi [/INST]"
