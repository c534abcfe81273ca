"""Files written atomically (checkpoints, data caches) and caches trusted only when they match what they were made
from."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def write_atomic(obj: object, path: Path) -> None:
    """``torch.save(obj, path)`` through a temporary file beside ``path``, flushed to disk and then renamed over
    it: a process killed while writing leaves ``path`` as it was, never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_atomic(obj: dict, path: Path) -> None:
    """Writes a cache with ``write_atomic``; a cache we cannot write only costs the decoding time next run."""
    try:
        write_atomic(obj, path)
    except OSError:
        pass


def load_cached(path: Path, fingerprint: list) -> dict | None:
    """The cached dict at ``path`` if it was saved with this fingerprint; an unreadable or stale cache is
    ignored (and rebuilt by the caller), never trusted."""
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, weights_only=True)
    except Exception:
        return None
    return cached if cached.get("fingerprint") == fingerprint else None
