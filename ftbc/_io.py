"""Atomic writes and checkpoints (safetensors + JSON sidecar).

Every file the suite produces goes through :func:`atomic_write`: a temporary
file in the destination folder, then ``os.replace``, so a killed job leaves
the old file or the new one, never half of one. Checkpoints are read with
safetensors only; nothing the suite loads is unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from ftbc.errors import CheckpointError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(weights: str | os.PathLike) -> Path:
    return Path(weights).with_suffix(".json")


def save_checkpoint(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``state`` as safetensors and ``meta`` (+ the weights' sha256) as JSON beside it."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp))
        digest = sha256_file(tmp)
    write_json(sidecar_path(path), {**meta, "sha256": digest, "weights": path.name})
    return path


def load_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`, checking its sha256."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not side.is_file():
        raise CheckpointError(f"checkpoint metadata not found: {side} (expected beside {path.name})")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint metadata {side} is not valid JSON: {e}") from None
    if verify and meta.get("sha256") != sha256_file(path):
        raise CheckpointError(f"checkpoint {path} does not match the sha256 in {side.name}: truncated or corrupted")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types on corrupt input
        raise CheckpointError(f"checkpoint {path} cannot be read as safetensors: {e}") from None
    return state, meta


def git_commit() -> str | None:
    """The suite's git commit (with '-dirty' if the tree has changes), or None outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "") if sha else None
