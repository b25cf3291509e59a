"""POST /v1/messages with the `anthropic` SDK, over the fake engine: text, streams, the tool
loop (tool_use -> tool_result), x-api-key authentication, errors."""

import anthropic
import httpx
import pytest

from tests.app_server import app_server
from tests.http.conftest import fake_engine

KEY = "messages-key"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def app(tokenizer):
    with app_server(fake_engine(tokenizer), api_keys=[KEY]) as running:
        yield running


@pytest.fixture
def client(app):
    app.engine.faults.reply = None
    return anthropic.Anthropic(base_url=app.base_url, api_key=KEY, max_retries=0)


def last_prompt(app) -> str:
    seen = list(app.engine.seen.values())[-1]
    return app.engine.tokenizer.decode(seen.token_ids)


def test_a_message_with_a_system_prompt(app, client):
    message = client.messages.create(
        model="fake-model",
        max_tokens=5,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.role == "assistant" and message.type == "message"
    assert message.stop_reason == "max_tokens"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.output_tokens == 5 and message.usage.input_tokens > 0
    assert "Be brief." in last_prompt(app) and "Hello" in last_prompt(app)


def test_a_stream_assembles_to_the_whole_message(client):
    request = {
        "model": "fake-model",
        "max_tokens": 6,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    whole = client.messages.create(**request)
    with client.messages.stream(**request) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 6


def test_a_tool_use_and_tool_result_loop(app, client):
    app.engine.faults.reply = CALL
    question = {"role": "user", "content": "Weather in Paris?"}
    first = client.messages.create(
        model="fake-model", max_tokens=300, tools=[TOOL], messages=[question]
    )
    assert first.stop_reason == "tool_use"
    (use,) = [block for block in first.content if block.type == "tool_use"]
    assert (use.name, use.input) == ("get_weather", {"city": "Paris"})
    app.engine.faults.reply = "It is sunny."
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C"}
    second = client.messages.create(
        model="fake-model",
        max_tokens=300,
        tools=[TOOL],
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [result]},
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "It is sunny."
    prompt = last_prompt(app)
    assert "Sunny, 21 C" in prompt and '"get_weather"' in prompt


def test_the_same_keys_by_x_api_key_and_bearer(app):
    body = {"model": "fake-model", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    url = f"{app.base_url}/v1/messages"
    assert httpx.post(url, json=body, headers={"x-api-key": KEY}).status_code == 200
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.post(url, json=body, headers={"x-api-key": "wrong"}).status_code == 401
    assert httpx.post(url, json=body).status_code == 401


def test_bad_requests_are_4xx(app, client):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(
            model="claude-x", max_tokens=2, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="fake-model", max_tokens=2, messages=[])
    body = {
        "model": "fake-model",
        "max_tokens": 10**6,
        "messages": [{"role": "user", "content": "x"}],
    }
    response = httpx.post(f"{app.base_url}/v1/messages", json=body, headers={"x-api-key": KEY})
    assert response.status_code == 400 and "context length" in response.text
