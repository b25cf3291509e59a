"""The three PosGen tasks and their disjoint train / validation / test splits.

Tokens are 0 .. modulus-1; a sequence starts with four seed tokens and every later token is
h(a, b, c, d) = (a + b + c + d) mod modulus of one far and three near earlier tokens:

- recursive:       x_l = h(x_{l-4}, x_{l-3}, x_{l-2}, x_{l-1})
- cot:             x_l = h(x_0,     x_{l-3}, x_{l-2}, x_{l-1})
- semi_recursive:  x_l = h(x_p,     x_{l-3}, x_{l-2}, x_{l-1}),  p = floor((l - 4) / 2)

A sequence is a function of its seeds, so splits are disjoint by seeds: each split draws its
seed tuples from one shuffled list of all modulus**4 tuples, without overlap.
"""

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

SEED_TOKENS = 4
MODULUS = 17


@dataclass(frozen=True)
class Layout:
    """How a sequence is laid out for the model: with or without a start token before the
    seeds, and the lengths (start token included) trained on and tested at."""

    name: str
    start_token: bool
    train_length: int
    test_length: int

    @property
    def prefix(self) -> int:
        """Positions that are not targets: the start token, if any, and the seeds."""
        return SEED_TOKENS + self.start_token

    @property
    def factor(self) -> float:
        return self.test_length / self.train_length

    def tokens(self, task: str, seeds: tuple[int, ...], length: int, start_id: int) -> list[int]:
        """A sequence of ``length`` tokens in this layout (``start_id``: the start token)."""
        head = [start_id] if self.start_token else []
        return head + sequence(task, seeds, length - len(head))


LAYOUTS = {
    # This project's default: the seeds open the sequence; 64 tokens trained, 256 tested, x4.
    "plain": Layout("plain", start_token=False, train_length=64, test_length=256),
    # The authors' code: a start token, then the seeds; 65 trained, 257 tested, YaRN x257/65.
    "authors": Layout("authors", start_token=True, train_length=65, test_length=257),
}


def _far_recursive(length: int) -> int:
    return length - 4


def _far_cot(length: int) -> int:
    return 0


def _far_semi_recursive(length: int) -> int:
    return (length - 4) // 2


# Task name -> the index of the far token that x_l depends on.
TASKS: dict[str, Callable[[int], int]] = {
    "recursive": _far_recursive,
    "cot": _far_cot,
    "semi_recursive": _far_semi_recursive,
}


def sequence(task: str, seeds: tuple[int, ...], length: int, modulus: int = MODULUS) -> list[int]:
    """The first ``length`` tokens of a task's sequence from its seed tokens."""
    if len(seeds) != SEED_TOKENS:
        raise ValueError(f"a PosGen sequence starts with {SEED_TOKENS} seed tokens")
    far = TASKS[task]
    tokens = list(seeds)
    for index in range(SEED_TOKENS, length):
        tokens.append((tokens[far(index)] + sum(tokens[index - 3 : index])) % modulus)
    return tokens[:length]


def split_seeds(
    sizes: dict[str, int], shuffle_seed: int, modulus: int = MODULUS
) -> dict[str, list[tuple[int, ...]]]:
    """Disjoint seed tuples for each split, in order, from one deterministic shuffle."""
    everything = list(itertools.product(range(modulus), repeat=SEED_TOKENS))
    if sum(sizes.values()) > len(everything):
        raise ValueError(f"only {len(everything)} distinct seed tuples exist")
    random.Random(shuffle_seed).shuffle(everything)
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = everything[start : start + size]
        start += size
    return splits
