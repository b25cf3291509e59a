"""Long documents for the perplexity evaluation, available offline and chosen deterministically.

The built-in source is the Python documentation's topic pages that every CPython carries
(``pydoc_data.topics``: the language reference, about 465,000 characters of English prose and
examples), taken in the order of their names and cut into consecutive, disjoint documents.
``--text-file`` and ``--jsonl`` (one ``{"text": ...}`` per line) take the user's own instead.
"""

import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Text is tokenized in pieces of about this many characters (any server accepts them).
PIECE_CHARACTERS = 4000


@dataclass
class Document:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def builtin_source() -> tuple[str, list[str]]:
    """A description of the source, and its paragraphs in a fixed order."""
    from pydoc_data.topics import topics

    version = ".".join(map(str, sys.version_info[:3]))
    paragraphs = [
        paragraph
        for name in sorted(topics)
        for paragraph in topics[name].split("\n\n")
        if paragraph.strip()
    ]
    return f"pydoc_data.topics of Python {version} (topics in name order)", paragraphs


def user_documents(text_files: list[Path], jsonl: Path | None) -> list[Document]:
    documents = [Document(path.name, path.read_text()) for path in text_files]
    if jsonl is not None:
        for number, line in enumerate(jsonl.read_text().splitlines(), 1):
            if line.strip():
                documents.append(Document(f"{jsonl.name}:{number}", json.loads(line)["text"]))
    return documents


def pieces(text: str) -> Iterator[str]:
    """Consecutive pieces whose concatenation is ``text``, cut after paragraph breaks."""
    start = 0
    while start < len(text):
        end = min(start + PIECE_CHARACTERS, len(text))
        if end < len(text):
            cut = text.rfind("\n\n", start, end)
            end = cut + 2 if cut > start else end
        yield text[start:end]
        start = end
