"""The built-in corpus: text that is on every machine with Python.

Documents are the Python standard library's own source files (tests, IDLE and lib2to3 left out)
and pydoc's English topic pages. The split is by document, decided by a hash of its name, so a
held-out file is never trained on, whatever the machine or the order files are listed in.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HELDOUT_MODULUS = 10  # one document in ten is held out


@dataclass(frozen=True)
class Document:
    name: str
    text: str

    @property
    def heldout(self) -> bool:
        digest = hashlib.sha1(self.name.encode()).hexdigest()
        return int(digest, 16) % HELDOUT_MODULUS == 0


def _stdlib_documents() -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__"}
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip.intersection(rel.parts) or rel.parts[0].startswith("test"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            docs.append(Document(f"stdlib/{rel.as_posix()}", text))
    return docs


def _pydoc_documents() -> list[Document]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return []
    return [Document(f"pydoc/{key}", topics[key]) for key in sorted(topics) if topics[key].strip()]


def load_documents() -> list[Document]:
    """All documents, sorted by name (deterministic on a given Python version)."""
    return sorted(_stdlib_documents() + _pydoc_documents(), key=lambda d: d.name)


def split_documents(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    train = [d for d in docs if not d.heldout]
    heldout = [d for d in docs if d.heldout]
    return train, heldout


def corpus_fingerprint(docs: list[Document]) -> dict:
    """What a recipe records about its corpus, so a rebuild elsewhere can tell it differs."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.name.encode())
        h.update(hashlib.sha256(d.text.encode()).digest())
    return {
        "python": sys.version.split()[0],
        "documents": len(docs),
        "characters": sum(len(d.text) for d in docs),
        "sha256": h.hexdigest(),
    }
