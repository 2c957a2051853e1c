"""Where LTD keeps what it builds, how it writes files without ever leaving half of one, and what
machine it runs on (recorded beside every measurement)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ltd.errors import first_line

PACKAGE_DIR = Path(__file__).resolve().parent


def ltd_home() -> Path:
    """Root of built pairs and caches: ``$LTD_HOME``, default ``~/.cache/ltd``."""
    return Path(os.environ.get("LTD_HOME", Path.home() / ".cache" / "ltd")).expanduser()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A process killed mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as open() would make it (mkstemp makes it private)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_text(path: Path, what: str, error: type[Exception], fix: str) -> str:
    """The UTF-8 text in ``path``; a missing, unreadable or undecodable file raises ``error`` in one line."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist: {fix}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text: {fix}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path} ({first_line(exc)}): {fix}") from None


def read_json(path: Path, what: str, error: type[Exception], fix: str) -> Any:
    """The JSON in ``path``; a missing, unreadable or invalid file raises ``error`` in one line."""
    text = read_text(path, what, error, fix)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise error(f"{what} {path} is not valid JSON ({first_line(exc)}): {fix}") from None


def read_yaml(path: Path, what: str, error: type[Exception], fix: str) -> Any:
    """The YAML in ``path``, read with ``yaml.safe_load`` (plain data: never objects or code)."""
    import yaml

    text = read_text(path, what, error, fix)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML ({first_line(exc)}): {fix}") from None
    except RecursionError:
        raise error(f"{what} {path} nests too deeply: {fix}") from None


def _old(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def settled_dir(path: str | Path) -> Path:
    """``path``, or the previous copy an interrupted :func:`replace_dir` left at ``path.old``."""
    path = Path(path)
    return _old(path) if not path.exists() and _old(path).is_dir() else path


def replace_dir(staging: Path, out: Path) -> None:
    """Put the complete folder ``staging`` at ``out``, replacing what was there.

    Two renames: ``out`` to ``out.old``, then ``staging`` to ``out``; a process killed between them
    leaves the previous folder whole at ``out.old``, where :func:`settled_dir` finds it (and the
    next replacement restores it first). A folder, unlike a file, cannot be swapped in one rename.
    """
    staging, out = Path(staging), Path(out)
    old = _old(out)
    if old.is_dir():
        if out.exists():  # a finished swap whose clean-up was interrupted
            shutil.rmtree(old)
        else:  # an interrupted swap: the previous folder is the good one
            old.replace(out)
    if out.exists():
        out.replace(old)
    staging.replace(out)
    if old.exists():
        shutil.rmtree(old)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hardware() -> dict:
    """The machine a figure was measured on: policies and cost models do not transfer between machines."""
    import torch

    info = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
