"""Training batches cut from an in-memory uint8 dataset, augmented as tensors on the training device.

CIFAR fits on a GPU as one uint8 tensor (50,000 x 3 x 32 x 32 = 150 MB), so
the per-sample ``DataLoader`` (decode, augment, collate, copy) is not needed:
:class:`TensorBatches` gathers a batch by index on the device and applies the
release augmentations batched (random crop with zero padding, horizontal
flip, Cutout). Measured on one CPU thread: 3 ms per batch of 128 against
13 ms for per-sample ``transforms.v2`` in a DataLoader, and about 240 ms for
a vgg_small training step; on a GPU the per-sample path would be the
bottleneck (a vgg_small epoch of the batched path took 1.7 s on an H200). AutoAugment has no batched
version here: recipes with it use the per-sample loader (``ftbc.train.training``).

Every random number is drawn on the CPU from one ``torch.Generator`` in a
fixed order (permutation, then per batch: crop offsets y, x, flips, Cutout
corners y, x), so a seed gives the same batches on every device, a saved
generator state resumes the stream, and a data-parallel run that draws for
the whole global batch and keeps its own shard sees exactly the images a
single process would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AugmentDraw", "draw_augmentation", "apply_crop_flip", "apply_cutout", "random_crop_flip",
           "shard_bounds", "TensorBatches", "in_memory_uint8"]


@dataclass(frozen=True)
class AugmentDraw:
    """The random choices for a batch of N images (CPU tensors, int64 / bool, shape ``[N]``)."""

    off_y: Tensor
    off_x: Tensor
    flip: Tensor | None
    cut_y: Tensor | None
    cut_x: Tensor | None

    def select(self, part: slice) -> "AugmentDraw":
        """The choices of images ``part`` (a rank's shard of a global batch)."""
        pick = (lambda t: None if t is None else t[part])
        return AugmentDraw(self.off_y[part], self.off_x[part], pick(self.flip), pick(self.cut_y), pick(self.cut_x))


def draw_augmentation(n: int, size: tuple[int, int], *, padding: int, flip: bool, cutout: int,
                      generator: torch.Generator | None) -> AugmentDraw:
    """Draw crop offsets (uniform in [0, 2 * padding]), flips (p = 1/2) and Cutout corners.

    The distributions of torchvision's ``RandomCrop(H, padding)``,
    ``RandomHorizontalFlip(0.5)`` and of the data module's Cutout (a
    ``RandomErasing`` square of side ``cutout`` lying fully inside the image:
    top-left corner uniform in [0, H - cutout] x [0, W - cutout]).
    """
    h, w = size
    if not 0 <= cutout < min(h, w):
        raise ValueError(f"cutout must be in [0, {min(h, w)}), got {cutout}")
    off_y = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    off_x = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else None
    cut_y = cut_x = None
    if cutout:
        cut_y = torch.randint(0, h - cutout + 1, (n,), generator=generator)
        cut_x = torch.randint(0, w - cutout + 1, (n,), generator=generator)
    return AugmentDraw(off_y, off_x, flips, cut_y, cut_x)


def apply_crop_flip(images: Tensor, draw: AugmentDraw, *, padding: int) -> Tensor:
    """Crop each ``[C, H, W]`` window of the zero-padded images at its offset, flipped where drawn.

    One gather on the images' device, no Python loop over images.

    Args:
        images: ``[N, C, H, W]``, any dtype (uint8 in the trainer).
        draw: choices for these N images.
        padding: zero padding on each side before the crop.

    Returns:
        ``[N, C, H, W]``, same dtype and device.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    rows = draw.off_y[:, None] + torch.arange(h)                       # [N, H]
    cols = draw.off_x[:, None] + torch.arange(w)                       # [N, W]
    if draw.flip is not None:
        cols = torch.where(draw.flip[:, None], cols.flip(1), cols)
    dev = images.device
    padded = F.pad(images, (padding,) * 4) if padding else images
    return padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                  rows.to(dev)[:, None, :, None], cols.to(dev)[:, None, None, :]]


def apply_cutout(images: Tensor, draw: AugmentDraw, *, size: int) -> Tensor:
    """Set a ``size`` x ``size`` square of every channel to 0, in place, at the drawn corners.

    Applied after normalisation, as in the QCFS release (0 is the mean colour).
    ``images``: float ``[N, C, H, W]``; returns it.
    """
    if draw.cut_y is None or draw.cut_x is None or size == 0:
        return images
    _, _, h, w = images.shape
    dev = images.device
    cy, cx = draw.cut_y.to(dev)[:, None], draw.cut_x.to(dev)[:, None]
    ry, rx = torch.arange(h, device=dev)[None, :], torch.arange(w, device=dev)[None, :]
    in_rows = (ry >= cy) & (ry < cy + size)                              # [N, H]
    in_cols = (rx >= cx) & (rx < cx + size)                              # [N, W]
    return images.masked_fill_(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0.0)


def random_crop_flip(images: Tensor, *, padding: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None) -> Tensor:
    """Random crop with zero padding and random horizontal flip, per image, batched (no Cutout)."""
    if images.dim() != 4:
        raise ValueError(f"random_crop_flip expects [N, C, H, W], got shape {tuple(images.shape)}")
    draw = draw_augmentation(len(images), tuple(images.shape[-2:]), padding=padding, flip=flip, cutout=0,
                             generator=generator)
    return apply_crop_flip(images, draw, padding=padding)


def shard_bounds(n: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous part of ``n`` items split into ``world_size`` near-equal parts."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class TensorBatches:
    """Batches of normalised float images cut from in-memory uint8 tensors on ``device``.

    A stand-in for a DataLoader over ``(images, labels)``: yields
    ``(x [B, C, H, W] float32, y [B] int64)``. Shuffling and augmentation draw
    from ``generator`` (see the module docstring).

    Data parallel: with ``world_size`` > 1 every rank walks the same global
    batches of ``batch_size`` and yields its shard (``batch_size / world_size``
    images); a last global batch that does not split into equal shards is
    dropped, so that the average of the ranks' mean losses is the global mean.
    """

    def __init__(self, images: Tensor, labels: Tensor, *, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], device="cpu", shuffle: bool = False, crop_padding: int = 0, flip: bool = False,
                 cutout: int = 0, generator: torch.Generator | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} does not split over {world_size} processes")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.crop_padding, self.flip, self.cutout = crop_padding, flip, cutout
        self.generator, self.rank, self.world_size = generator, rank, world_size
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def _sizes(self) -> list[int]:
        n, b = len(self.labels), self.batch_size
        sizes = [min(b, n - s) for s in range(0, n, b)]
        return [k for k in sizes if k % self.world_size == 0] if self.world_size > 1 else sizes

    def __len__(self) -> int:
        return len(self._sizes())

    @property
    def augments(self) -> bool:
        return bool(self.crop_padding or self.flip or self.cutout)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.world_size > 1 and len(idx) % self.world_size:
                break  # the last, uneven global batch (see the class docstring)
            draw = (draw_augmentation(len(idx), tuple(self.images.shape[-2:]), padding=self.crop_padding,
                                      flip=self.flip, cutout=self.cutout, generator=self.generator)
                    if self.augments else None)
            part = shard_bounds(len(idx), self.rank, self.world_size)
            idx = idx[part].to(self.device)
            x = self.images[idx]
            if draw is not None:
                draw = draw.select(part)
                x = apply_crop_flip(x, draw, padding=self.crop_padding)
            x = (x.float().div_(255.0) - self.mean) / self.std
            if draw is not None and self.cutout:
                x = apply_cutout(x, draw, size=self.cutout)
            yield x, self.labels[idx]


def in_memory_uint8(dataset) -> tuple[Tensor, Tensor] | None:
    """``(images [N, C, H, W] uint8, labels [N] int64)`` of an untransformed dataset, or None.

    None when the samples are not uint8 tensors (an ImageFolder of files, say),
    in which case the caller falls back to per-sample transforms.
    """
    if len(dataset) == 0:
        return None
    x0, _ = dataset[0]
    if not (isinstance(x0, Tensor) and x0.dtype == torch.uint8 and x0.dim() == 3):
        return None
    images = getattr(dataset, "images", None)
    labels = getattr(dataset, "targets", getattr(dataset, "labels", None))
    if isinstance(images, Tensor) and images.shape[1:] == x0.shape and labels is not None:
        return images, torch.as_tensor(labels, dtype=torch.int64)
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.int64)
