"""Long-document sessions: each simulated user holds a long document and asks follow-ups.

A user's first turn sends its own document (exactly ``document_tokens`` tokens, unique to the
user) and a question; each next turn sends the whole conversation so far (the document, the
questions and the answers the server gave) and one more question, as a chat client does. Turns
of one user go one after another, users at once. What a server gains from its prefix cache
shows in the follow-ups: their time to first token, and the share of their prompt tokens it
served from the cache (``usage.prompt_tokens_details.cached_tokens`` where the server gives it;
else, for the whole run, from vLLM's ``vllm:prefix_cache_hits`` / ``queries`` metrics). Every
turn of a user carries the header ``X-Session-ID: user-N``, by which a router with session
affinity (vllm-router's ``consistent_hash``) keeps the conversation on one replica.
"""

import asyncio
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from loadtests.client import RequestRecord, send
from loadtests.stats import distribution

QUESTION = "Question {turn}: in two sentences, what does the text above say about item {turn}?"
CACHE_METRICS = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total")


@dataclass
class SessionPlan:
    users: int
    turns: int
    document_tokens: int
    output_tokens: int


def turn_body(model: str, messages: list[dict[str, str]], output_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": messages,
        "max_tokens": output_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def run_user(
    client: httpx.AsyncClient,
    model: str,
    plan: SessionPlan,
    user: int,
    document: str,
    started: float,
    progress: tqdm,
) -> list[RequestRecord]:
    """One user's conversation, turn after turn."""
    history: list[dict[str, str]] = []
    records = []
    for turn in range(plan.turns):
        question = QUESTION.format(turn=turn + 1)
        content = f"{document}\n\n{question}" if turn == 0 else question
        history.append({"role": "user", "content": content})
        record = RequestRecord(
            "session", user, plan.document_tokens, turn, time.perf_counter() - started
        )
        answer: list[str] = []
        body = turn_body(model, history, plan.output_tokens)
        session = {"X-Session-ID": f"user-{user}"}
        records.append(await send(client, "chat", body, record, collect=answer, headers=session))
        progress.update()
        if not record.ok:
            break  # the conversation cannot go on without the answer
        history.append({"role": "assistant", "content": "".join(answer)})
    return records


def metric_totals(text: str) -> dict[str, float]:
    """The prefix-cache counters of a Prometheus text page, summed over their label sets."""
    totals = dict.fromkeys(CACHE_METRICS, 0.0)
    for line in text.splitlines():
        match = re.match(r"^([a-z_:]+)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if match and match.group(1) in totals:
            totals[match.group(1)] += float(match.group(2))
    return totals


async def server_cache_counters(client: httpx.AsyncClient) -> dict[str, float] | None:
    try:
        response = await client.get("/metrics")
    except httpx.HTTPError:
        return None
    return metric_totals(response.text) if response.status_code == 200 else None


def summarize_turns(records: list[RequestRecord], turns: int) -> list[dict[str, Any]]:
    """Per turn: latencies and the prefix-cache share the server reported."""
    rows = []
    for turn in range(turns):
        of_turn = [r for r in records if r.index == turn]
        done = [r for r in of_turn if r.ok]
        reported = [r for r in done if r.cached_tokens is not None]
        prompt = sum(r.served_prompt_tokens for r in reported)
        rows.append(
            {
                "turn": turn + 1,
                "completed": len(done),
                "failed": len(of_turn) - len(done),
                "prompt_tokens_mean": (
                    sum(r.served_prompt_tokens for r in done) / len(done) if done else None
                ),
                "ttft_ms": distribution([r.ttft_ms for r in done if r.ttft_ms is not None]),
                "e2e_ms": distribution([r.e2e_ms for r in done if r.e2e_ms is not None]),
                "cache_share": (
                    sum(r.cached_tokens for r in reported) / prompt if reported and prompt else None
                ),
            }
        )
    return rows


async def run_sessions(
    client: httpx.AsyncClient, model: str, plan: SessionPlan, document: Any
) -> dict[str, Any]:
    """``document(user)``: the text of one user's document."""
    before = await server_cache_counters(client)
    texts = [await asyncio.to_thread(document, user) for user in range(plan.users)]
    started = time.perf_counter()
    progress = tqdm(total=plan.users * plan.turns, desc="sessions", unit="turn", leave=False)
    per_user = await asyncio.gather(
        *(
            run_user(client, model, plan, user, texts[user], started, progress)
            for user in range(plan.users)
        )
    )
    progress.close()
    seconds = time.perf_counter() - started
    after = await server_cache_counters(client)
    records = [record for user in per_user for record in user]
    summary: dict[str, Any] = {
        "users": plan.users,
        "turns_per_user": plan.turns,
        "document_tokens": plan.document_tokens,
        "output_tokens": plan.output_tokens,
        "duration_s": seconds,
        "turns": summarize_turns(records, plan.turns),
    }
    if before is not None and after is not None:
        hits, queries = (after[name] - before[name] for name in CACHE_METRICS)
        summary["server_cache_share"] = hits / queries if queries else None
    return {"summary": summary, "records": records}


def print_sessions(summary: dict[str, Any]) -> None:
    print(
        f"\n{summary['users']} users x {summary['turns_per_user']} turns, documents of "
        f"{summary['document_tokens']} tokens, {summary['output_tokens']} output tokens a turn, "
        f"{summary['duration_s']:.0f} s"
    )
    print("| turn | completed | prompt tokens | TTFT p50 ms | TTFT p90 ms | E2E p50 ms | cached |")
    print("|---|---|---|---|---|---|---|")
    for row in summary["turns"]:
        share = row["cache_share"]
        prompt = row["prompt_tokens_mean"]
        print(
            f"| {row['turn']} | {row['completed']} | {prompt or 0:.0f} | "
            f"{row['ttft_ms']['p50'] or 0:.0f} | {row['ttft_ms']['p90'] or 0:.0f} | "
            f"{row['e2e_ms']['p50'] or 0:.0f} | "
            f"{'n/a' if share is None else f'{share:.1%}'} |"
        )
    if summary.get("server_cache_share") is not None:
        print(f"prefix-cache hits / queries on the server: {summary['server_cache_share']:.1%}")


def report_runs(results: dict[str, dict[str, Any]], out: Path | None, name: str) -> None:
    """Each labelled run's table; all of them as ``out/name`` when ``out`` is given."""
    for label, summary in results.items():
        print(f"\n### {label}")
        print_sessions(summary)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(results, indent=2))
