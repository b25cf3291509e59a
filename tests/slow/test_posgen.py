"""PosGen: the tasks as the paper defines them, and one model through the whole chain (trained
with transformers, served by resonance-serve with Resonance-YaRN, scored over HTTP)."""

import itertools
import json
import math

import httpx
import pytest

from benchmarks.posgen import report, scoring, tasks
from benchmarks.posgen.__main__ import serve_command
from benchmarks.posgen.model import ModelSize, build_model, save, start_token_id
from benchmarks.posgen.training import TrainingPlan, teacher_forced_accuracy, train
from harness.servers import free_port, serving


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("recursive", "2 0 3 1 6 3 6 2 3 0 4 2"),
        ("cot", "2 0 3 1 6 5 0 6 6 0 0 1"),
        ("semi_recursive", "2 0 3 1 6 5 5 2 1 4 1 0"),
    ],
)
def test_figure_2_sequences(task, expected):
    """The paper's Fig. 2 examples (h = sum mod 7, seeds 2 0 3 1), first 12 tokens."""
    assert tasks.sequence(task, (2, 0, 3, 1), 12, modulus=7) == [int(t) for t in expected.split()]


def test_each_token_follows_its_rule_at_modulus_17():
    for task, far in [
        ("recursive", lambda n: n - 4),
        ("cot", lambda n: 0),
        ("semi_recursive", lambda n: (n - 4) // 2),
    ]:
        x = tasks.sequence(task, (16, 3, 9, 12), 256)
        assert len(x) == 256 and x[:4] == [16, 3, 9, 12]
        for n in range(4, 256):
            assert x[n] == (x[far(n)] + x[n - 3] + x[n - 2] + x[n - 1]) % 17, (task, n)


def test_splits_are_disjoint_and_deterministic():
    sizes = {"train": 10_000, "validation": 1000, "test": 1000}
    splits = tasks.split_seeds(sizes, shuffle_seed=3)
    assert {name: len(seeds) for name, seeds in splits.items()} == sizes
    for a, b in itertools.combinations(splits.values(), 2):
        assert not set(a) & set(b)
    assert len(set(splits["train"])) == sizes["train"]
    assert tasks.split_seeds(sizes, shuffle_seed=3) == splits
    assert tasks.split_seeds(sizes, shuffle_seed=4)["test"] != splits["test"]
    with pytest.raises(ValueError, match="distinct seed tuples"):
        tasks.split_seeds({"train": 17**4 + 1}, shuffle_seed=0)


def test_marks_compare_the_top_token_with_the_expected_one():
    logprobs = {"top_logprobs": [None, {"3": -0.1}, {"5": -0.2, "4": -1.9}, {"16": -0.5}]}
    assert scoring.correct_by_position(logprobs, [1, 3, 4, 16]) == [None, True, False, True]
    with pytest.raises(ValueError, match="entries for"):
        scoring.correct_by_position(logprobs, [1, 3])


def test_table_has_the_papers_layout_and_numbers():
    results = [
        {
            "row": row,
            "task": "cot",
            "seed": seed,
            "ood_accuracy": 0.5 + 0.1 * seed,
            "id_accuracy": 0.9,
        }
        for row in report.ROWS
        for seed in range(3)
    ]
    table = report.tables(results, tasks.LAYOUTS["authors"])
    assert "start token, then the seeds; trained on 65 tokens, tested on 257" in table
    assert "factor 3.954" in table
    assert "| method | CoT |" in table
    assert "| Resonance-YaRN (s=4) | 60.00 ± 10.00 (99.58) |" in table
    assert "| RoPE | 90.00 ± 0.00 |" in table


# The served test runs the authors' layout: a start token before the seeds, YaRN x257/65.
LAYOUT = tasks.LAYOUTS["authors"]
TRAIN_LENGTH, TEST_LENGTH = LAYOUT.train_length, LAYOUT.test_length


def test_layouts_put_the_start_token_before_the_seeds():
    seeds, start = (16, 3, 9, 12), start_token_id(17)
    plain = tasks.LAYOUTS["plain"].tokens("recursive", seeds, 64, start)
    authors = LAYOUT.tokens("recursive", seeds, 65, start)
    assert plain == tasks.sequence("recursive", seeds, 64)
    assert authors == [start, *plain] and start == 18
    assert (LAYOUT.prefix, tasks.LAYOUTS["plain"].prefix) == (5, 4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model trained for a few steps with Resonance RoPE on the recursive task."""
    seeds = tasks.split_seeds({"train": 512, "test": 6}, shuffle_seed=0)
    start = start_token_id(17)
    data = [LAYOUT.tokens("recursive", s, TRAIN_LENGTH, start) for s in seeds["train"]]
    model, tokenizer = build_model(ModelSize(1, 64, 1, 128), "resonance", 17, TEST_LENGTH, 0)
    plan = TrainingPlan(512, 2, 16, 3e-3)
    facts = train(model, data, plan, seed=0, label="smoke", prefix=LAYOUT.prefix)
    assert facts["final_epoch_loss"] < math.log(len(tokenizer))  # below a uniform guess
    facts["validation_accuracy"] = teacher_forced_accuracy(model, data[:64], LAYOUT.prefix)
    out = save(model, tokenizer, tmp_path_factory.mktemp("posgen"), facts)
    test = [LAYOUT.tokens("recursive", s, TEST_LENGTH, start) for s in seeds["test"]]
    return out, test


def _offline_marks(checkpoint, sequences) -> list[list[bool]]:
    """Top-1 guesses of the same weights in transformers, Resonance-YaRN x257/65 over 65."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    import rope_plugins.transformers_hooks

    rope_plugins.transformers_hooks.install()
    config = AutoConfig.from_pretrained(checkpoint)
    config.rope_parameters = {
        "rope_type": "resonance_yarn",
        "rope_theta": 10000.0,
        "factor": LAYOUT.factor,
        "original_max_position_embeddings": TRAIN_LENGTH,
        "beta_fast": 2.0,
        "beta_slow": 1.0,
    }
    model = LlamaForCausalLM.from_pretrained(checkpoint, config=config, dtype=torch.float64)
    with torch.no_grad():
        rows = torch.tensor(sequences)
        guesses = model(input_ids=rows).logits[:, :-1].argmax(-1)
    return (guesses == rows[:, 1:]).tolist()


def test_trained_model_served_with_resonance_yarn_and_scored_over_http(trained, tmp_path):
    checkpoint, test = trained
    port = free_port()
    command = serve_command(checkpoint, "resonance_yarn", port, LAYOUT)
    with serving(command, port, tmp_path / "server.log") as server:
        marks = scoring.score(server.base_url, "posgen", test)
        reported = scoring.summary(marks, TRAIN_LENGTH, LAYOUT.prefix)
        body = {
            "model": "posgen",
            "prompt": [s[:-1] for s in test],
            "max_tokens": 1,
            "temperature": 0,
            "echo": True,
            "logprobs": 1,
        }
        raw = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120).json()
    # Recomputed from the raw answer another way: a prompt token was the top-1 guess when its own
    # log-probability is the largest of its position; the last one is the greedy token itself.
    recomputed = []
    choices = sorted(raw["choices"], key=lambda c: c["index"])
    for choice, sequence in zip(choices, test, strict=True):
        values, tops = choice["logprobs"]["token_logprobs"], choice["logprobs"]["top_logprobs"]
        assert len(values) == TEST_LENGTH
        row = [values[n] >= max(tops[n].values()) for n in range(1, TEST_LENGTH - 1)]
        row.append(choice["logprobs"]["tokens"][-1] == str(sequence[-1]))
        recomputed.append(row)

    def share(start: int, stop: int) -> float:
        hits = [m for row in recomputed for m in row[start - 1 : stop - 1]]
        return sum(hits) / len(hits)

    assert reported["id_accuracy"] == pytest.approx(share(LAYOUT.prefix, TRAIN_LENGTH), abs=1e-12)
    assert reported["ood_accuracy"] == pytest.approx(share(TRAIN_LENGTH, TEST_LENGTH), abs=1e-12)
    # The same weights and scaling in transformers (float64) guess the same tokens, but for
    # near-ties between two tokens that float32 may order either way.
    offline = _offline_marks(checkpoint, test)
    served = [bool(m) for row in marks for m in row[1:]]
    pairs = zip(itertools.chain(*offline), served, strict=True)
    differ = sum(a != b for a, b in pairs)
    print(
        f"served vs transformers: {differ} of {len(test) * (TEST_LENGTH - 1)} guesses differ; "
        f"ID {reported['id_accuracy']:.3f}, OOD {reported['ood_accuracy']:.3f}"
    )
    assert differ <= 0.01 * len(test) * (TEST_LENGTH - 1)
    assert json.loads((checkpoint / "posgen.json").read_text())["validation_accuracy"] > 0
