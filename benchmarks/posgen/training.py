"""Training a PosGen model with transformers: next-token loss on every token after the seeds."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainingPlan:
    train_sequences: int
    epochs: int
    batch_size: int
    learning_rate: float
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01


# The paper: 10,000 sequences, 150 epochs, AdamW at 2e-4, batch 128.
PAPER_PLAN = TrainingPlan(train_sequences=10_000, epochs=150, batch_size=128, learning_rate=2e-4)


def _batch(rows: Any, prefix: int) -> tuple[Any, Any]:
    labels = rows.clone()
    labels[:, :prefix] = -100  # start token and seeds: nothing to learn in predicting them
    return rows, labels


def train(
    model: Any,
    sequences: list[list[int]],
    plan: TrainingPlan,
    seed: int,
    label: str,
    prefix: int,
    threads: Callable[[], int] | None = None,
) -> dict[str, float]:
    """Train in place; returns the last epoch's mean loss, tokens per second and seconds.

    The first ``prefix`` positions of each sequence (start token, seeds) are not targets.
    ``threads``, asked every few steps, sets how many threads PyTorch may use now (one while a
    server is scoring on the other core).
    """
    import torch
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    data = torch.tensor(sequences, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(data) // plan.batch_size)
    total = steps_per_epoch * plan.epochs
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=plan.learning_rate, weight_decay=plan.weight_decay
    )
    schedule = get_cosine_schedule_with_warmup(optimizer, int(plan.warmup_fraction * total), total)
    model.train()
    started = time.monotonic()
    epoch_loss = 0.0
    with tqdm(total=total, desc=f"train {label}", unit="step", leave=False) as bar:
        for _ in range(plan.epochs):
            order = torch.randperm(len(data), generator=generator)
            losses = []
            for start in range(0, len(data), plan.batch_size):
                if threads is not None and bar.n % 16 == 0:
                    torch.set_num_threads(threads())
                inputs, labels = _batch(data[order[start : start + plan.batch_size]], prefix)
                loss = model(input_ids=inputs, labels=labels).loss
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            epoch_loss = sum(losses) / len(losses)
    seconds = time.monotonic() - started
    model.eval()
    return {
        "final_epoch_loss": epoch_loss,
        "seconds": seconds,
        "tokens_per_second": data.numel() * plan.epochs / seconds,
    }


def teacher_forced_accuracy(model: Any, sequences: list[list[int]], prefix: int) -> float:
    """Offline accuracy on every target (validation, at the trained length)."""
    import torch

    data = torch.tensor(sequences, dtype=torch.long)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), 256):
            rows = data[start : start + 256]
            predicted = model(input_ids=rows).logits[:, prefix - 1 : -1].argmax(-1)
            correct += (predicted == rows[:, prefix:]).sum().item()
    return correct / (len(data) * (data.shape[1] - prefix))
