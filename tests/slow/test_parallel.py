"""Several engine processes through resonance-serve on the CPU build: tensor parallel 2,
pipeline parallel 2, and pipeline parallel 2 across two "nodes" on the loopback interface.

Each serves the plain tiny checkpoint as the session server does (resonance_yarn x4, float32)
and must give the session server's prompt log-probabilities (a 900-token prompt on the scaled
table, a 200-token one on the unscaled table of the per-request policy), /v1/models card (but
its name) and RoPE metric. No thread
variable is set here (and any in the environment is removed): the server picks the binding.
The reference is one eager process. In float32 the others differ only in summation order and
kernels: measured, tensor parallel 2 (eager) mean 5.7e-6 and at most 6.0e-5 nats, pipeline
parallel 2 (compiled, as it must be) mean 1.0e-5 and at most 1.9e-4. The bounds (mean 5e-5,
any token 1e-3) leave room for that and none for another RoPE (more than 1e-2 past the 256
trained positions); bfloat16 would differ by ~1e-2.
"""

import contextlib
import subprocess

import httpx
import pytest
import torch

from harness.servers import SERVER, RunningServer, free_port, stop_server
from server.plan import BINDING_VARIABLES
from tests.helpers import FACTOR, served, token_prompt

NAME = "tiny-parallel"
NO_BINDING = dict.fromkeys(BINDING_VARIABLES)  # removed from the servers' environment


def flags(checkpoint) -> list[str]:
    return [
        "--model",
        str(checkpoint),
        "--served-model-name",
        NAME,
        "--rope-type",
        "resonance_yarn",
        "--rope-factor",
        str(FACTOR),
        "--dtype",
        "float32",
    ]


@contextlib.contextmanager
def parallel_server(checkpoint, tmp_path_factory, *extra: str):
    log = tmp_path_factory.mktemp("parallel") / "server.log"
    with served([*flags(checkpoint), *extra], log, env=NO_BINDING, timeout=600) as running:
        yield running


@contextlib.contextmanager
def worker_node(checkpoint, log, *extra: str):
    """A node of rank 1: no HTTP, so started and stopped here rather than waited on."""
    command = [*SERVER, *flags(checkpoint), *extra]
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    node = RunningServer("http://127.0.0.1:0", process, log)
    try:
        yield node
    finally:
        stop_server(node)


@pytest.fixture(scope="module")
def reference(http):
    """The session server: the same checkpoint and flags in one eager process (per-request
    RoPE tables: the 900-token prompt scaled, the 200-token one unscaled)."""
    ids, short = token_prompt(900, salt=12), token_prompt(200, salt=13)
    return ids, served_facts(http, ids) | {"short": served_facts(http, short)["logprobs"]}


def served_facts(http: httpx.Client, ids: list[int]) -> dict:
    (card,) = http.get("/v1/models").json()["data"]
    rope = [
        line
        for line in http.get("/metrics").text.splitlines()
        if line.startswith("resonance_rope_info{")
    ]
    body = {"model": card["id"], "prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 0}
    answer = http.post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    logprobs = answer.json()["choices"][0]["logprobs"]["token_logprobs"][1 : len(ids)]
    card = {k: v for k, v in card.items() if k not in ("id", "root", "created")}
    return {"logprobs": torch.tensor(logprobs, dtype=torch.float64), "card": card, "rope": rope}


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    difference = (got - expected).abs()
    print(f"\nparallel vs one process: mean {difference.mean():.1e}, max {difference.max():.1e}")
    assert difference.mean() < 5e-5 and difference.max() < 1e-3


def assert_same(reference, running: RunningServer) -> None:
    """Each rank shifts the positions of its own runner: both tables as in one process."""
    ids, expected = reference
    with httpx.Client(base_url=running.base_url, timeout=300) as http:
        got = served_facts(http, ids)
        short = served_facts(http, token_prompt(200, salt=13))["logprobs"]
    assert_close(got["logprobs"], expected["logprobs"])
    assert_close(short, expected["short"])
    assert got["card"] == expected["card"] and got["card"]["rope_policy"] == "per-request"
    assert got["rope"] == expected["rope"] and len(got["rope"]) == 1


@pytest.mark.parametrize(
    "layout",
    [["--tensor-parallel-size", "2", "--enforce-eager"], ["--pipeline-parallel-size", "2"]],
    ids=["tensor-parallel-2", "pipeline-parallel-2"],
)
def test_one_host_several_processes_serve_what_one_process_does(
    reference, plain_checkpoint, tmp_path_factory, layout
):
    with parallel_server(plain_checkpoint, tmp_path_factory, *layout) as running:
        assert_same(reference, running)
        assert "engine threads: VLLM_CPU_OMP_THREADS_BIND=0|1" in running.output()


def test_pipeline_parallel_across_two_nodes_on_loopback(
    reference, plain_checkpoint, tmp_path_factory
):
    nodes = [
        "--pipeline-parallel-size",
        "2",
        "--nnodes",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
    ]
    log = tmp_path_factory.mktemp("node1") / "worker.log"
    with (
        worker_node(plain_checkpoint, log, *nodes, "--node-rank", "1") as worker,
        parallel_server(plain_checkpoint, tmp_path_factory, *nodes) as leader,
    ):
        assert_same(reference, leader)
        assert "node 0 of 2" in leader.output()
    assert "node 1 of 2, engine workers" in worker.output()


def test_eager_pipeline_parallel_is_refused_in_one_line(plain_checkpoint):
    command = [
        *SERVER,
        *flags(plain_checkpoint),
        "--pipeline-parallel-size",
        "2",
        "--enforce-eager",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("resonance-serve: error:")]
    assert "drop --enforce-eager" in line and "Traceback" not in done.stderr
