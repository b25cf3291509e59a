"""resonance-eval against the real servers: ours on the tiny checkpoint, and vLLM's own."""

import json
import math
import sys

import httpx
import numpy as np
import pytest

from evals import passkey
from evals.cli import main
from harness.client import metric_samples
from harness.servers import free_port, serving
from tests.helpers import API_KEY, MODEL_NAME, ORIGINAL_CONTEXT

LENGTHS = [256, 512, 1000]


def prompt_token_sum(http: httpx.Client) -> float:
    (value,) = metric_samples(http.get("/metrics").text, "resonance_request_prompt_tokens_sum")
    return value


def run_eval(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as stop:
        return int(stop.code or 0) if not isinstance(stop.code, str) else 1
    return 0


def load(out) -> tuple[dict, list[dict]]:
    summary = json.loads((out / "summary.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return summary, samples


@pytest.fixture(scope="module")
def perplexity_run(server, http, tmp_path_factory):
    out = tmp_path_factory.mktemp("perplexity")
    before = prompt_token_sum(http)
    code = run_eval(
        "perplexity",
        "--base-url",
        server.base_url,
        "--model",
        MODEL_NAME,
        "--api-key",
        API_KEY,
        "--lengths",
        ",".join(map(str, LENGTHS)),
        "--documents",
        "2",
        "--bucket",
        "128",
        "--out",
        str(out),
        "--trained-context",
        str(ORIGINAL_CONTEXT),
        "--concurrency",
        "2",
    )
    return code, out, prompt_token_sum(http) - before


def test_perplexity_prompts_have_exactly_the_lengths_asked(perplexity_run):
    code, out, served_prompt_tokens = perplexity_run
    assert code == 0
    summary, samples = load(out)
    assert sorted({s["length"] for s in samples}) == LENGTHS
    assert [len(s["logprobs"]) for s in samples] == [s["length"] for s in samples]
    # What the server counted (its own prompt-token metric) is what was asked, to the token.
    assert served_prompt_tokens == sum(LENGTHS) * 2
    assert len(summary["documents"]) == 2
    assert all(len(d["sha256"]) == 64 for d in summary["documents"])
    assert {s["sha256"] for s in samples} == {d["sha256"] for d in summary["documents"]}
    for name in ("perplexity.csv", "perplexity_by_position.png"):
        assert (out / name).stat().st_size > 0


def test_reported_nll_equals_one_recomputed_from_the_raw_log_probabilities(perplexity_run, http):
    _, out, _ = perplexity_run
    summary, samples = load(out)
    for length in LENGTHS:
        values = -np.concatenate(
            [np.array(s["logprobs"][1:], dtype=float) for s in samples if s["length"] == length]
        )
        row = summary["lengths"][str(length)]
        assert row["mean_nll"] == pytest.approx(values.mean(), rel=1e-12)
        assert row["perplexity"] == pytest.approx(math.exp(values.mean()), rel=1e-12)
        first_bucket = summary["buckets"][str(length)][0]
        head = -np.concatenate(
            [np.array(s["logprobs"][1:128], dtype=float) for s in samples if s["length"] == length]
        )
        assert first_bucket["mean_nll"] == pytest.approx(head.mean(), rel=1e-12)
    # The recorded log-probabilities are the server's: ask again, independently (the run
    # batched two requests at once, which moves float32 sums by about 1e-5).
    from evals.documents import builtin_source, pieces

    _, paragraphs = builtin_source()
    text = next(pieces("\n\n".join(paragraphs)))
    # the whole 256-token sample again: a shorter prompt would run on the unscaled table
    ids = http.post("/tokenize", json={"prompt": text}).json()["tokens"][:256]
    echo = http.post(
        "/v1/completions",
        json={"model": MODEL_NAME, "prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 0},
    )
    raw = echo.json()["choices"][0]["logprobs"]["token_logprobs"][1:256]
    recorded = next(s for s in samples if s["length"] == 256)["logprobs"][1:256]
    np.testing.assert_allclose(recorded, raw, rtol=0, atol=1e-4)


def test_passkey_places_the_key_where_asked_and_scores_it(server, http, tmp_path):
    out = tmp_path / "passkey"
    before = prompt_token_sum(http)
    code = run_eval(
        "passkey",
        "--base-url",
        server.base_url,
        "--model",
        MODEL_NAME,
        "--api-key",
        API_KEY,
        "--lengths",
        "300,900",
        "--depths",
        "0,0.5,1",
        "--samples",
        "1",
        "--candidates",
        "2",
        "--out",
        str(out),
    )
    assert code == 0
    summary, samples = load(out)
    assert len(samples) == 6 and len(summary["cells"]) == 6
    tokens = lambda text, special=False: http.post(  # noqa: E731
        "/tokenize", json={"prompt": text, "add_special_tokens": special}
    ).json()["count"]
    instructions = tokens(passkey.INSTRUCTIONS, special=True)
    question = tokens(passkey.QUESTION)
    for sample in samples:
        assert not sample["error"]
        assert sample["prompt_tokens"] == sample["length"]  # exact, as the server counted
        needle = tokens(" " + passkey.NEEDLE.format(key=sample["key"]))
        room = sample["length"] - instructions - needle - question
        assert sample["key_position"] == instructions + round(sample["depth"] * room)
        assert sample["key_logprob"] < 0 and 1 <= sample["rank"] <= 3
    # Each sample: a greedy request of L tokens, then the true key and two candidates scored.
    key_tokens = sum(tokens(" " + s["key"]) for s in samples)  # every key here has as many
    expected = sum(4 * s["length"] for s in samples) + 3 * key_tokens
    assert prompt_token_sum(http) - before == pytest.approx(expected, abs=3 * len(samples) * 2)
    assert (out / "passkey.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("evaluation", "where", "key", "lengths", "error"),
    [
        ("perplexity", "server", API_KEY, "4096", "do not fit the server's context of 1024"),
        ("passkey", "nobody", None, "300", "ConnectError"),
        ("passkey", "server", "wrong-key", "300", "HTTP 401"),
    ],
)
def test_failing_and_unreachable_servers_are_reported_not_raised(
    server, tmp_path, evaluation, where, key, lengths, error
):
    url = server.base_url if where == "server" else f"http://127.0.0.1:{free_port()}"
    arguments = [
        evaluation,
        "--base-url",
        url,
        "--model",
        MODEL_NAME,
        "--lengths",
        lengths,
        "--out",
        str(tmp_path),
    ]
    if key:
        arguments += ["--api-key", key]
    assert run_eval(*arguments) == 1
    summary, _ = load(tmp_path)
    assert error in summary["errors"][0]


def test_plot_overlays_runs(perplexity_run, tmp_path):
    _, out, _ = perplexity_run
    assert run_eval("plot", str(out), str(out), "--out", str(tmp_path / "both.png")) == 0
    assert (tmp_path / "both.png").stat().st_size > 0


def test_vllms_own_server_gives_the_same_numbers(
    perplexity_run, resonance_checkpoint, tmp_path_factory
):
    """vLLM's OpenAI server, with this project's plugin, on the same weights and RoPE."""
    _, ours, _ = perplexity_run
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(resonance_checkpoint),
        "--served-model-name",
        MODEL_NAME,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--port",
        str(port),
        "--max-num-seqs",
        "8",
    ]
    out = tmp_path_factory.mktemp("perplexity-vllm")
    with serving(command, port, log, timeout=300) as vllm_server:
        code = run_eval(
            "perplexity",
            "--base-url",
            vllm_server.base_url,
            "--model",
            MODEL_NAME,
            "--lengths",
            ",".join(map(str, LENGTHS)),
            "--documents",
            "2",
            "--bucket",
            "128",
            "--out",
            str(out),
        )
    assert code == 0
    theirs, _ = load(out)
    mine, _ = load(ours)
    assert theirs["documents"] == mine["documents"]  # the same tokens, by their hashes
    for length in map(str, LENGTHS):
        assert theirs["lengths"][length]["perplexity"] == pytest.approx(
            mine["lengths"][length]["perplexity"], rel=1e-4
        )
