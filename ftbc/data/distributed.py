"""Data-parallel training under ``torchrun``: process group, sharded batches, global BatchNorm.

Launch N processes with ``torchrun --nproc_per_node=N -m ftbc train ...``;
torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
address, and :func:`process_group` joins them (NCCL on CUDA, gloo on CPU).
Without those variables everything here is a no-op, so a plain ``ftbc train``
is one process as before.

The recipe's batch size stays the *global* batch: every rank walks the same
seeded order and takes its shard (``batch_size / world_size`` images), so
the data, and with ``sync_bn`` the BatchNorm statistics, are those of a
single-process run with the same batch; DDP averages the gradients.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Sampler

from ftbc.data.batches import shard_bounds

__all__ = ["DistEnv", "process_group", "wrap_model", "unwrap", "GlobalBatchNorm2d", "convert_sync_batchnorm",
           "all_reduce_min", "broadcast_int", "barrier", "ShardedBatchSampler", "seed_worker"]


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and logs; the others only compute."""
        return self.rank == 0


def env_from_environ() -> DistEnv:
    """Read torchrun's variables; absent or a world of one means a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistEnv(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[tuple[DistEnv, torch.device]]:
    """Join torchrun's process group for the block; yields ``(env, this rank's device)``.

    On CUDA each rank takes GPU ``LOCAL_RANK``. A group created here is
    destroyed on exit; one the caller created is left alone.
    """
    env = env_from_environ()
    if not env.enabled:
        yield env, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield env, device
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks.

    For gloo (CPU), where ``torch.nn.SyncBatchNorm`` refuses to run: two
    differentiable all-reduces per layer (the sum, then the sum of squared
    deviations from the global mean, which is the two-pass variance that
    ``F.batch_norm`` computes on one batch). Same parameters and buffers as
    ``nn.BatchNorm2d``, so checkpoints do not change.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = (0, 2, 3)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count)
        n = float(count.item())
        mean = all_reduce(x.sum(dims)) / n
        centred = x - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm2d use global-batch statistics: torch's SyncBatchNorm on CUDA, ours on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d  # same state, another forward
    return model


def wrap_model(model: nn.Module, env: DistEnv, device: torch.device, *, sync_bn: bool) -> nn.Module:
    """``DistributedDataParallel(model)`` in a process group (rank 0's weights win), else ``model``."""
    if not env.enabled:
        return model
    if sync_bn:
        model = convert_sync_batchnorm(model, device)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (its state_dict keys have no ``module.`` prefix)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_min(t: Tensor, env: DistEnv) -> Tensor:
    """Elementwise minimum over ranks, in place (identity for one process)."""
    if env.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def broadcast_int(value: int, env: DistEnv, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank (a decision all ranks must share)."""
    if not env.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


class ShardedBatchSampler(Sampler[list[int]]):
    """Index batches for a per-sample DataLoader: this rank's shard of each seeded global batch.

    The order is ``randperm(n, generator)`` (or ``0..n-1``); with one process
    this is a plain batch sampler. With several, a last global batch that
    does not split into equal shards is dropped (see ``TensorBatches``).
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} does not split over {world_size} processes")
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        full, last = divmod(self.n, self.batch_size)
        return full + (last > 0 and (self.world_size == 1 or last % self.world_size == 0))

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.world_size > 1 and len(idx) % self.world_size:
                break
            yield idx[shard_bounds(len(idx), self.rank, self.world_size)].tolist()


def seed_worker(worker_id: int, rank: int = 0) -> None:
    """DataLoader ``worker_init_fn``: distinct, reproducible streams per (rank, worker).

    torch seeds worker k with base_seed + k, base_seed drawn from the
    loader's generator (the same on every rank); the rank is mixed in so ranks
    do not repeat each other's augmentation draws, and Python's and NumPy's
    RNGs follow.
    """
    seed = (torch.initial_seed() + rank * 0x9E3779B97F4A7C15) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
