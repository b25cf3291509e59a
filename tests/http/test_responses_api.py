"""POST /v1/responses with the `openai` SDK over the fake engine: text, instructions, items,
streams, function calls and their outputs, structured output, previous_response_id."""

import httpx
import openai
import pydantic
import pytest

from tests.app_server import app_server
from tests.http.conftest import fake_engine

KEY, OTHER_KEY = "responses-key", "other-key"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def app(tokenizer):
    with app_server(fake_engine(tokenizer), api_keys=[KEY, OTHER_KEY]) as running:
        yield running


@pytest.fixture
def client(app):
    app.engine.faults.reply = None
    return openai.OpenAI(base_url=f"{app.base_url}/v1", api_key=KEY, max_retries=0)


def last_prompt(app) -> str:
    seen = list(app.engine.seen.values())[-1]
    return app.engine.tokenizer.decode(seen.token_ids)


def test_text_in_text_out(app, client):
    response = client.responses.create(
        model="fake-model", input="Hello", instructions="Be brief.", max_output_tokens=5
    )
    assert response.object == "response" and response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text and response.output[0].type == "message"
    assert response.usage.output_tokens == 5 and response.usage.input_tokens > 0
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert "Be brief." in last_prompt(app) and "Hello" in last_prompt(app)


def test_the_stream_carries_the_events_the_sdk_reads(client):
    whole = client.responses.create(model="fake-model", input="Hello", max_output_tokens=6)
    events = list(
        client.responses.create(model="fake-model", input="Hello", max_output_tokens=6, stream=True)
    )
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed" and events[-1].response.status == "incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole.output_text == events[-1].response.output_text
    with client.responses.stream(model="fake-model", input="Hello", max_output_tokens=6) as s:
        assert s.get_final_response().output_text == whole.output_text


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_call_and_its_output(app, client, stream):
    app.engine.faults.reply = CALL
    request = {"model": "fake-model", "tools": [TOOL], "max_output_tokens": 300}
    if stream:
        with client.responses.stream(input="Weather in Paris?", **request) as events:
            first = events.get_final_response()
    else:
        first = client.responses.create(input="Weather in Paris?", **request)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')
    app.engine.faults.reply = "It is sunny."
    second = client.responses.create(
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
        ],
        **request,
    )
    assert second.output_text == "It is sunny." and second.status == "completed"
    assert "Sunny, 21 C" in last_prompt(app)


def test_structured_output_with_parse(app, client):
    class Answer(pydantic.BaseModel):
        city: str

    app.engine.faults.reply = None
    seen_before = len(app.engine.seen)
    with pytest.raises(pydantic.ValidationError):  # the fake answers {} to any JSON schema
        client.responses.parse(model="fake-model", input="City?", text_format=Answer)
    (request,) = list(app.engine.seen.values())[seen_before:]
    assert request.params.structured_outputs.json["properties"] == {
        "city": {"title": "City", "type": "string"}
    }


def test_previous_response_id_continues_the_conversation_per_key(app, client):
    first = client.responses.create(
        model="fake-model", input="My name is Ada.", max_output_tokens=3
    )
    second = client.responses.create(
        model="fake-model",
        input="What is my name?",
        previous_response_id=first.id,
        max_output_tokens=3,
    )
    assert second.previous_response_id == first.id
    prompt = last_prompt(app)
    assert (
        prompt.index("My name is Ada.")
        < prompt.index(first.output_text.strip())
        < prompt.index("What is my name?")
    )
    other = openai.OpenAI(base_url=f"{app.base_url}/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="fake-model", input="x", previous_response_id=first.id)
    unstored = client.responses.create(
        model="fake-model", input="x", store=False, max_output_tokens=2
    )
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="fake-model", input="y", previous_response_id=unstored.id)


def test_unsupported_parts_are_400s(app):
    headers = {"Authorization": f"Bearer {KEY}"}
    url = f"{app.base_url}/v1/responses"
    web = {"model": "fake-model", "input": "x", "tools": [{"type": "web_search"}]}
    assert httpx.post(url, json=web, headers=headers).status_code == 400
    image = {
        "model": "fake-model",
        "input": [
            {
                "role": "user",
                "content": [{"type": "input_image", "image_url": "http://example.invalid/a.png"}],
            }
        ],
    }
    assert httpx.post(url, json=image, headers=headers).status_code == 400
    assert httpx.post(url, json={"model": "fake-model", "input": "x"}).status_code == 401


@pytest.mark.parametrize(
    "extra",
    [
        {"prompt": {"id": "pmpt_1"}},  # refused inside vLLM's request model
        {"input": [{"type": "file_search_call", "id": "f", "queries": [], "status": "completed"}]},
        {  # an earlier answer with no content: vLLM's converter reads its first part
            "input": [
                {"type": "message", "id": "m", "role": "assistant", "status": "completed"}
                | {"content": []}
            ]
        },
    ],
    ids=["prompt-template", "file-search-item", "empty-output-message"],
)
def test_input_vllms_converters_refuse_is_a_400(app, extra):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "fake-model", "input": "x"} | extra
    answer = httpx.post(f"{app.base_url}/v1/responses", json=body, headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_tool_calls_false_allows_exactly_one_call(app, client, parallel):
    seen_before = len(app.engine.seen)
    client.responses.create(
        model="fake-model",
        input="x",
        tools=[TOOL],
        tool_choice="required",
        parallel_tool_calls=parallel,
        max_output_tokens=20,
    )
    (request,) = list(app.engine.seen.values())[seen_before:]
    schema = request.params.structured_outputs.json
    assert schema["type"] == "array" and schema.get("maxItems") == (None if parallel else 1)
