"""Negative log-likelihood by token position, from the prompt log-probabilities a server returns.

Each document is cut to each requested length (its first L tokens, as the server tokenizes it)
and sent once with ``echo`` and ``logprobs``; position i's NLL is -log p(token i | tokens < i).
Perplexity is exp(mean NLL) over positions 1..L-1 of every document of that length.
"""

import math
from dataclasses import dataclass, field
from typing import Any

from evals.client import Client, EvalError
from evals.documents import Document, builtin_source, pieces
from evals.runner import gather


@dataclass
class TokenizedDocument:
    document: Document
    ids: list[int]


@dataclass
class Sample:
    document: str
    sha256: str
    length: int
    logprobs: list[float | None] = field(default_factory=list)
    error: str = ""

    @property
    def nll(self) -> list[float]:
        """NLL of positions 1..L-1 (position 0 has nothing before it)."""
        return [-value for value in self.logprobs[1:] if value is not None]

    def record(self) -> dict[str, Any]:
        nll = self.nll
        return {
            "document": self.document,
            "sha256": self.sha256,
            "length": self.length,
            "mean_nll": sum(nll) / len(nll) if nll else None,
            "logprobs": self.logprobs,
            "error": self.error,
        }


async def tokenize_document(client: Client, document: Document) -> TokenizedDocument:
    """The document's ids, with what the tokenizer puts first (BOS) when it adds one."""
    ids = await client.tokenize("", special=True)
    for piece in pieces(document.text):
        ids += await client.tokenize(piece)
    return TokenizedDocument(document, ids)


async def builtin_documents(client: Client, count: int, tokens: int) -> list[TokenizedDocument]:
    """``count`` consecutive, disjoint documents of at least ``tokens`` tokens each."""
    source, paragraphs = builtin_source()
    start_ids = await client.tokenize("", special=True)
    documents: list[TokenizedDocument] = []
    text, ids, first = "", list(start_ids), 0
    corpus = "\n\n".join(paragraphs)
    for number, piece in enumerate(pieces(corpus)):
        text += piece
        ids += await client.tokenize(piece)
        if len(ids) >= tokens:
            name = f"{source}, pieces {first}-{number}"
            documents.append(TokenizedDocument(Document(name, text), ids[:tokens]))
            if len(documents) == count:
                return documents
            text, ids, first = "", list(start_ids), number + 1
    raise EvalError(
        f"the built-in source holds {len(documents)} documents of {tokens} tokens, not {count}: "
        "ask for fewer or shorter, or give --text-file/--jsonl"
    )


def plan(documents: list[TokenizedDocument], lengths: list[int]) -> list[tuple[int, int]]:
    """(document index, length) for every document long enough for each length."""
    return [
        (d, length)
        for length in lengths
        for d, doc in enumerate(documents)
        if len(doc.ids) >= length
    ]


async def run(
    client: Client, documents: list[TokenizedDocument], lengths: list[int], concurrency: int
) -> list[Sample]:
    async def score(task: tuple[int, int]) -> Sample:
        index, length = task
        doc = documents[index]
        sample = Sample(doc.document.name, doc.document.sha256, length)
        try:
            sample.logprobs = await client.prompt_logprobs(doc.ids[:length])
        except EvalError as error:
            sample.error = str(error)
        return sample

    return await gather(score, plan(documents, lengths), concurrency, "perplexity")


def summarize(samples: list[Sample], bucket: int) -> dict[str, Any]:
    """Perplexity per length, and per position bucket within each length."""
    lengths: dict[str, Any] = {}
    buckets: dict[str, list[dict[str, Any]]] = {}
    for length in sorted({s.length for s in samples}):
        scored = [s for s in samples if s.length == length and not s.error]
        values = [v for s in scored for v in s.nll]
        mean = sum(values) / len(values) if values else None
        lengths[str(length)] = {
            "documents": len(scored),
            "tokens": len(values),
            "mean_nll": mean,
            "perplexity": math.exp(mean) if mean is not None else None,
        }
        rows = []
        for start in range(0, length, bucket):
            end = min(start + bucket, length)
            # NLL of position p sits at index p - 1 of Sample.nll (position 0 has none).
            window = [v for s in scored for v in s.nll[max(start - 1, 0) : end - 1]]
            if window:
                window_mean = sum(window) / len(window)
                rows.append(
                    {
                        "start": start,
                        "end": end,
                        "mean_nll": window_mean,
                        "perplexity": math.exp(window_mean),
                    }
                )
        buckets[str(length)] = rows
    return {"lengths": lengths, "buckets": buckets}
