"""vLLM's own admission limit, reached through --engine-arg: a 503 with Retry-After, as vLLM's
server answers it (it was a 500 with a traceback), and the server serves on."""

import concurrent.futures

import httpx
import pytest

from tests.helpers import MODEL_NAME, served, token_prompt


@pytest.fixture(scope="module")
def queue_of_one(plain_checkpoint, tmp_path_factory):
    args = [
        "--model",
        str(plain_checkpoint),
        "--served-model-name",
        MODEL_NAME,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-num-seqs",
        "1",
        "--engine-arg",
        "max_num_queued_reqs=1",
    ]
    with served(args, tmp_path_factory.mktemp("queue") / "server.log") as running:
        yield running


def test_a_full_engine_queue_is_a_503_with_retry_after(queue_of_one):
    body = {"model": MODEL_NAME, "prompt": token_prompt(50), "max_tokens": 150, "ignore_eos": True}
    url = f"{queue_of_one.base_url}/v1/completions"
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: httpx.post(url, json=body, timeout=120), range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}, statuses
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["code"] == "engine_busy"
    assert httpx.post(url, json=body | {"max_tokens": 2}, timeout=60).status_code == 200
