"""Per-epoch training state, so that a killed run restarted with the same command carries on.

After every epoch the trainer writes, beside the final ``model.*`` files:

- ``last-epochNNNN.safetensors``: the tensors (model weights and buffers
  under ``model/``, optimiser buffers under ``optim/<param>/``, the RNG states
  as uint8 under ``rng/``: torch CPU, each CUDA device, the data generator);
- ``last.json``: the scalars (epochs done and planned, the run's identity,
  optimiser hyperparameters, scheduler state, Python and NumPy RNG states,
  the metrics so far), the tensor file's name and its sha256.

Each file is written atomically (temporary file, then rename) and
``last.json`` is written last, naming its own tensor file: it is the commit
point, so a kill at any moment leaves a consistent previous or new state
(one shared tensor file name would leave new tensors beside old metadata).
Older tensor files are deleted after the commit. Nothing is unpickled on the
way back. The state is dropped once the final model is
written. Restoring every RNG makes a resumed CPU run bit-identical to an
uninterrupted one; on a GPU, non-deterministic kernels make that a close
match rather than an exact one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from safetensors.torch import load_file, save_file

from ftbc._io import atomic_write, sha256_file, write_json
from ftbc.errors import CheckpointError

__all__ = ["STATE_NAME", "FORMAT", "ResumeState", "save_state", "load_state", "restore", "remove_state"]

STATE_NAME = "last.json"
FORMAT = "ftbc.resume.v1"


@dataclass
class ResumeState:
    """What :func:`load_state` read: the tensors and the JSON metadata."""

    tensors: dict[str, Tensor]
    meta: dict[str, Any]

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return int(self.meta["epoch"])

    @property
    def epochs(self) -> int:
        """Epochs planned (fixed after the first epoch when a time budget sized them)."""
        return int(self.meta["epochs"])


def _rng_tensors(data_generator: torch.Generator | None) -> dict[str, Tensor]:
    out = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng/cuda/{i}"] = s
    if data_generator is not None:
        out["rng/data"] = data_generator.get_state()
    return out


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}


def save_state(out: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               data_generator: torch.Generator | None, epoch: int, epochs: int, run_key: dict[str, Any],
               metrics: dict[str, Any]) -> Path:
    """Write ``out/last-epochNNNN.safetensors`` + ``out/last.json`` after ``epoch`` completed epochs."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entries in opt["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{idx}/{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    tensors.update(_rng_tensors(data_generator))
    meta = {
        "format": FORMAT, "epoch": epoch, "epochs": epochs, "run_key": run_key, "metrics": metrics,
        "optimizer_param_groups": opt["param_groups"], "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng_python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "rng_numpy": _numpy_state(),
    }
    out = Path(out)
    weights = out / f"last-epoch{epoch:04d}.safetensors"
    with atomic_write(weights) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        digest = sha256_file(tmp)
    write_json(out / STATE_NAME, {**meta, "weights": weights.name, "sha256": digest})
    for old in out.glob("last-epoch*.safetensors"):
        if old.name != weights.name:
            old.unlink(missing_ok=True)
    return out / STATE_NAME


def load_state(out: Path, run_key: dict[str, Any]) -> ResumeState | None:
    """The saved state in ``out``, or None if there is none.

    Raises:
        CheckpointError: the state is corrupt, or belongs to a run with other
            settings (the message names them; use another ``--out`` or ``--restart``).
    """
    path = Path(out) / STATE_NAME
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        weights = path.parent / meta["weights"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a readable training state ({e}): delete it or pass --restart") from None
    if not weights.is_file() or sha256_file(weights) != meta.get("sha256"):
        raise CheckpointError(f"{weights} is missing or does not match the sha256 in {path.name}: "
                              f"delete {path.name} or pass --restart")
    tensors = load_file(str(weights))
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ftbc training state (format {meta.get('format')!r})")
    saved = meta.get("run_key", {})
    differ = sorted(k for k in set(saved) | set(run_key) if saved.get(k) != _jsonable(run_key.get(k)))
    if differ:
        raise CheckpointError(f"{path.parent} holds the state of a run with other settings (differs in: "
                              f"{', '.join(differ)}): use another --out, or --restart to train from scratch")
    return ResumeState(tensors, meta)


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparison with a saved key."""
    return json.loads(json.dumps(value, default=str))


def restore(state: ResumeState, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
            data_generator: torch.Generator | None) -> None:
    """Load the weights, optimiser, scheduler and every RNG from ``state`` (strict)."""
    t, meta = state.tensors, state.meta
    model.load_state_dict({k[len("model/"):]: v for k, v in t.items() if k.startswith("model/")}, strict=True)
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in t.items():
        if k.startswith("optim/"):
            _, idx, name = k.split("/", 2)
            opt_state.setdefault(int(idx), {})[name] = v
    for idx, entries in meta["optimizer_scalars"].items():
        opt_state.setdefault(int(idx), {}).update(entries)
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer_param_groups"]})
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(t["rng/torch"])
    cuda_states = [t[f"rng/cuda/{i}"] for i in range(len(t)) if f"rng/cuda/{i}" in t]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[:torch.cuda.device_count()])
    if data_generator is not None and "rng/data" in t:
        data_generator.set_state(t["rng/data"])
    version, internal, gauss = meta["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    npst = meta["rng_numpy"]
    np.random.set_state((npst["name"], np.asarray(npst["keys"], dtype=np.uint32), npst["pos"], npst["has_gauss"],
                         npst["gauss"]))


def remove_state(out: Path) -> None:
    """Delete the per-epoch state once the final model is written."""
    out = Path(out)
    (out / STATE_NAME).unlink(missing_ok=True)  # first: without it the tensor files are ignored
    for p in out.glob("last-epoch*.safetensors"):
        p.unlink(missing_ok=True)
