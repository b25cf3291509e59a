"""Hostile load, round three, against real servers on the tiny checkpoint: each attack of the
red-team pass (benchmarks/hostile_round3.py, whose figures are in docs/RESULTS.md section 4)
reproduced, and what the server must do instead."""

import pytest

from benchmarks import hostile_round3 as attack
from checkpoints.tiny import build_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("round3"))


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("round3-server") / "server.log"
    with attack.hostile_server(attack.server_flags(checkpoint), log) as running:
        yield running


@pytest.fixture(scope="module")
def lora_server(checkpoint, tmp_path_factory):
    flags = [*attack.server_flags(checkpoint), "--allow-runtime-lora", "--max-lora-rank", "8"]
    log = tmp_path_factory.mktemp("round3-lora") / "server.log"
    with attack.hostile_server(flags, log) as running:
        yield running


def test_concurrent_prompt_logprobs_on_a_lora_server_are_answered(lora_server):
    seen = attack.probe_lora_prompt_logprobs(lora_server)
    assert seen == {"statuses": [200, 200, 200], "server_alive": True}


def test_a_fifo_adapter_config_blocks_neither_health_nor_the_load(lora_server, tmp_path):
    seen = attack.probe_lora_fifo(lora_server, tmp_path)
    assert seen["slowest_health_s"] < 1 and seen["load"] == 400, seen


def test_health_answers_beside_1100_idle_connections_renewed_every_8_s(server):
    seen = attack.probe_lockout(server, seconds=20)
    assert seen["health_answered"] >= 0.9 * seen["health_probes"], seen


def test_health_fails_for_a_stopped_engine_and_recovers_after(server):
    seen = attack.probe_stall(server, stopped_for=12)
    failed = seen["health_failed_after_s"]
    assert failed is not None and failed <= attack.LIVENESS_SECONDS + 3, seen
    assert seen["health_after_sigcont"] == 200 and seen["stalled_request"] == 200, seen
    assert seen["request_after"] == 200


def test_a_benign_constraint_is_answered_beside_eight_hostile_ones(server):
    seen = attack.probe_constraints(server)
    assert seen["benign"] == 200 and seen["benign_s"] < 15, seen
    assert seen["hostile"] == [400], seen


def test_the_small_bad_inputs_are_400s(server):
    seen = attack.probe_small_inputs(server)
    statuses = {k: v for k, v in seen.items() if not k.endswith("_s")}
    assert set(statuses.values()) == {400}, seen


def test_sigterm_with_a_client_that_never_reads_ends_within_the_drain_timeout(server):
    seen = attack.probe_drain(server)  # (the module's last test: it stops the server)
    # The drain, then at most the shutdown's grace for the connections and for the engine.
    assert seen["exit_status"] == 0 and seen["exit_s"] < attack.DRAIN_SECONDS + 8, seen
