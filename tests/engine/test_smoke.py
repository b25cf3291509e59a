"""The one real-engine test `make test` runs: the server process on the tiny checkpoint with
vLLM's CPU build, so that a broken vLLM install or plugin fails the fast suite too."""

from tests.helpers import MODEL_NAME, token_prompt


def test_the_real_server_completes_chats_and_streams(client):
    (model,) = client.models.list().data
    assert model.id == MODEL_NAME and model.model_extra["rope_parameters"]["rope_type"] == (
        "resonance_yarn"
    )
    whole = client.completions.create(
        model=MODEL_NAME, prompt=token_prompt(300), max_tokens=4, temperature=0, logprobs=1
    )
    assert whole.usage.prompt_tokens == 300 and whole.usage.completion_tokens == 4
    assert all(v <= 0 for v in whole.choices[0].logprobs.token_logprobs)
    streamed = client.completions.create(
        model=MODEL_NAME, prompt=token_prompt(300), max_tokens=4, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == whole.choices[0].text
    chat = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hello"}], max_tokens=3
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 3
