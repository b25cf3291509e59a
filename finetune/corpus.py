"""The training text: plain text files or JSONL with a ``text`` field, split by document, packed.

Documents are held out by the hash of their text, so the split depends on the corpus only
(not on file order or a random seed), and no held-out document is ever trained on.
"""

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CorpusError(ValueError):
    """A corpus that cannot be trained on (one line, for the command's error message)."""


@dataclass(frozen=True)
class Corpus:
    train: list[list[int]]  # sequences of exactly seq_len tokens
    held_out: list[list[int]]  # full sequences, or one shorter when the held-out text is short
    documents: int
    held_out_documents: int


def _files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise CorpusError(f"corpus path {path} does not exist")


def read_documents(paths: Iterable[Path]) -> list[str]:
    """Each plain text file is one document; each line of a .jsonl file with a ``text`` field."""
    documents = []
    for file in _files(paths):
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CorpusError(f"{file} is not UTF-8 text") from None
        if file.suffix != ".jsonl":
            documents.append(text)
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise CorpusError(f"{file}:{number} is not JSON") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise CorpusError(f'{file}:{number} has no string field "text"')
            documents.append(row["text"])
    return [d for d in documents if d.strip()]


def held_out_split(documents: list[str], percent: float) -> tuple[list[str], list[str]]:
    """(train, held out): the ``percent`` of documents with the smallest text hashes, at least
    one when there are two documents or more, and never all of them."""
    digest = {i: hashlib.sha256(d.encode()).hexdigest() for i, d in enumerate(documents)}
    order = sorted(digest, key=digest.get)
    count = round(len(documents) * percent / 100)
    if percent > 0 and len(documents) >= 2:
        count = min(max(count, 1), len(documents) - 1)
    held = set(order[:count])
    train = [d for i, d in enumerate(documents) if i not in held]
    return train, [d for i, d in enumerate(documents) if i in held]


def token_stream(documents: list[str], tokenizer: Any) -> list[int]:
    """Documents one after another, each opened with BOS (if the tokenizer has one), closed
    with EOS."""
    stream: list[int] = []
    for document in documents:
        ids = tokenizer(document, add_special_tokens=False)["input_ids"]
        if tokenizer.bos_token_id is not None:
            stream.append(tokenizer.bos_token_id)
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    return stream


def pack(stream: list[int], seq_len: int) -> list[list[int]]:
    """Full sequences of ``seq_len`` tokens; the remainder is dropped."""
    return [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]


def build_corpus(
    paths: Iterable[Path], tokenizer: Any, seq_len: int, held_out_percent: float
) -> Corpus:
    documents = read_documents(paths)
    if not documents:
        raise CorpusError("the corpus holds no text")
    train_docs, held_docs = held_out_split(documents, held_out_percent)
    train_stream = token_stream(train_docs, tokenizer)
    train = pack(train_stream, seq_len)
    if not train:
        raise CorpusError(
            f"the corpus has {len(train_stream)} training tokens, fewer than one sequence "
            f"of --seq-len {seq_len}"
        )
    held_stream = token_stream(held_docs, tokenizer)
    held_out = pack(held_stream, seq_len) or ([held_stream] if len(held_stream) > 1 else [])
    return Corpus(
        train=train,
        held_out=held_out,
        documents=len(documents),
        held_out_documents=len(held_docs),
    )
