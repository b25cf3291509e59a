"""Two replicas behind vllm-router (the cache-aware router this project ships), all on loopback.

The router runs with session affinity (``consistent_hash`` on the ``X-Session-ID`` header) and
the health-check settings of the compose file and the Helm chart. Which replica served a
request is read from each replica's own request counter; whether its prefix was cached, from
the response's ``usage.prompt_tokens_details.cached_tokens``.
"""

import concurrent.futures
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from harness.client import metric
from harness.servers import free_port, serving, stop_server
from tests.helpers import start_server, token_prompt

NAME, SESSIONS, REPEATS = "tiny-replica", 8, 3
ROUTER = shutil.which("vllm-router", path=str(Path(sys.executable).parent))
ROUTER_HEALTH = [
    "--health-check-interval-secs",
    "2",
    "--health-failure-threshold",
    "1",
    "--cb-failure-threshold",
    "1",
]


@pytest.fixture(scope="module")
def replicas(plain_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("replicas")
    args = [
        "--model",
        str(plain_checkpoint),
        "--served-model-name",
        NAME,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--enable-prefix-caching",
        "--rope-type",
        "resonance_yarn",
        "--rope-factor",
        "4",
    ]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = list(pool.map(lambda i: start_server(args, folder / f"replica{i}.log"), (0, 1)))
    yield started
    for replica in started:
        stop_server(replica)


@pytest.fixture(scope="module")
def router(replicas, tmp_path_factory):
    port = free_port()
    command = [
        ROUTER,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        *[r.base_url for r in replicas],
        "--policy",
        "consistent_hash",
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(free_port()),
        *ROUTER_HEALTH,
    ]
    log = tmp_path_factory.mktemp("router") / "router.log"
    with serving(command, port, log, timeout=120) as running:
        yield running


def served_by(replicas) -> list[float]:
    return [
        metric(r.base_url, "resonance_requests_total", 'endpoint="/v1/completions"')
        for r in replicas
    ]


def ask(http: httpx.Client, session: int, max_tokens: int = 2) -> httpx.Response:
    body = {
        "model": NAME,
        "prompt": token_prompt(700, salt=100 + session),
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    return http.post("/v1/completions", json=body, headers={"X-Session-ID": f"s{session}"})


def test_a_sessions_long_prompts_land_on_the_replica_that_holds_them(router, replicas):
    placement: dict[int, set[int]] = {}
    with httpx.Client(base_url=router.base_url, timeout=120) as http:
        for repeat in range(REPEATS):
            for session in range(SESSIONS):
                before = served_by(replicas)
                response = ask(http, session)
                assert response.status_code == 200, response.text
                after = served_by(replicas)
                (replica,) = [i for i in (0, 1) if after[i] > before[i]]
                placement.setdefault(session, set()).add(replica)
                cached = response.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
                assert (cached > 0) == (repeat > 0), (session, repeat, cached)
    assert all(len(replica) == 1 for replica in placement.values()), placement
    counts = [sum(1 for r in placement.values() if r == {i}) for i in (0, 1)]
    print(f"\nsessions per replica: {counts}")
    assert min(counts) > 0  # different sessions spread over both


def test_a_stopped_replica_fails_no_request_of_the_live_one(router, replicas):
    """Requests for every session while replica 1 is stopped (SIGTERM, as an orchestrator
    does): the sessions of replica 0 lose nothing; replica 1's move over once the router sees
    it gone."""
    with httpx.Client(base_url=router.base_url, timeout=120) as http:
        home = {}
        for session in range(SESSIONS):
            before = served_by(replicas)
            assert ask(http, session).status_code == 200
            after = served_by(replicas)
            home[session] = 0 if after[0] > before[0] else 1
        results: list[tuple[int, int, float]] = []
        stopper = threading.Timer(2.0, stop_server, args=(replicas[1],))
        stopper.start()
        started = time.monotonic()
        while time.monotonic() - started < 20:
            for session in range(SESSIONS):
                status = ask(http, session, max_tokens=8).status_code
                results.append((session, status, time.monotonic() - started))
        stopper.join()
    failed_live = [r for r in results if home[r[0]] == 0 and r[1] != 200]
    failed_moved = [r for r in results if home[r[0]] == 1 and r[1] != 200]
    print(
        f"\n{len(results)} requests; failed: {len(failed_live)} of the live replica's "
        f"sessions, {len(failed_moved)} of the stopped one's {failed_moved}"
    )
    assert not failed_live
    late = [r for r in results if r[2] > 12]  # well after the router's 2 s health check
    assert late and all(status == 200 for _, status, _ in late)
