"""Tensor augmentation and sharded batches (ftbc.data.batches, ftbc.data.distributed samplers): CPU tensors, milliseconds.

The same functions run on a GPU in training; here they run on CPU tensors,
which is where their logic is checked.
"""

from __future__ import annotations

import pytest
import torch

from ftbc.data.batches import TensorBatches, apply_cutout, draw_augmentation, shard_bounds
from ftbc.data.distributed import GlobalBatchNorm2d, ShardedBatchSampler, convert_sync_batchnorm


def test_cutout_zeroes_one_square_fully_inside_each_image():
    n, size, side = 400, 12, 5
    draw = draw_augmentation(n, (size, size), padding=0, flip=False, cutout=side,
                             generator=torch.Generator().manual_seed(0))
    x = apply_cutout(torch.ones(n, 3, size, size), draw, size=side)
    zero = x == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])  # every channel
    for i in range(n):
        rows, cols = zero[i, 0].nonzero(as_tuple=True)
        assert len(rows) == side * side, "the square is clipped or missing"
        assert rows.max() - rows.min() == side - 1 and cols.max() - cols.min() == side - 1
        assert (int(rows.min()), int(cols.min())) == (int(draw.cut_y[i]), int(draw.cut_x[i]))
    # top-left corners uniform over [0, size - side] on both axes, as the data module's RandomErasing
    assert set(draw.cut_y.tolist()) == set(range(size - side + 1)) == set(draw.cut_x.tolist())
    with pytest.raises(ValueError, match="cutout"):
        draw_augmentation(2, (8, 8), padding=0, flip=False, cutout=8, generator=None)


def test_batches_apply_cutout_after_normalisation():
    images = torch.full((6, 3, 8, 8), 200, dtype=torch.uint8)
    b = TensorBatches(images, torch.zeros(6), batch_size=6, mean=(0.5,) * 3, std=(0.25,) * 3, cutout=3,
                      generator=torch.Generator().manual_seed(1))
    x, _ = next(iter(b))
    expected = (200 / 255 - 0.5) / 0.25
    assert ((x == 0).sum(dim=(1, 2, 3)) == 3 * 9).all()
    assert torch.allclose(x[x != 0], torch.tensor(expected))


@pytest.mark.parametrize("n", [50, 51])
def test_two_shards_are_the_single_process_batch(n):
    """Each rank's shard of every global batch, augmentation included, is that rank's part of one process's batch."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 10, 10), dtype=torch.uint8, generator=g)
    labels = torch.arange(n)
    kw = dict(batch_size=20, mean=(0.5,) * 3, std=(0.2,) * 3, shuffle=True, crop_padding=2, flip=True, cutout=3)
    single = list(TensorBatches(images, labels, generator=torch.Generator().manual_seed(7), **kw))
    ranks = [list(TensorBatches(images, labels, generator=torch.Generator().manual_seed(7), rank=r, world_size=2,
                                **kw)) for r in range(2)]
    last_even = (n % 20) % 2 == 0
    assert len(ranks[0]) == len(ranks[1]) == len(single) - (0 if last_even else 1)
    assert len(TensorBatches(images, labels, rank=0, world_size=2, **kw)) == len(ranks[0])
    for (x, y), (x0, y0), (x1, y1) in zip(single, *ranks):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
        assert len(y0) == len(y1)
    assert not torch.equal(single[0][0], single[1][0])


def test_sharded_batch_sampler_splits_the_same_global_batches():
    kw = dict(shuffle=True)
    single = list(ShardedBatchSampler(23, 6, generator=torch.Generator().manual_seed(3), **kw))
    r0, r1 = (list(ShardedBatchSampler(23, 6, generator=torch.Generator().manual_seed(3), rank=r, world_size=2, **kw))
              for r in range(2))
    assert sorted(i for b in single for i in b) == list(range(23))
    assert len(r0) == len(r1) == 3 == len(ShardedBatchSampler(23, 6, shuffle=True, generator=None, world_size=2))  # 5 left: odd
    for b, b0, b1 in zip(single, r0, r1):
        assert b0 + b1 == b and len(b0) == len(b1) == 3
    assert len(single) == len(ShardedBatchSampler(23, 6, shuffle=True, generator=None)) == 4
    with pytest.raises(ValueError, match="does not split"):
        ShardedBatchSampler(23, 5, shuffle=True, generator=None, world_size=2)


def test_shard_bounds_cover_without_overlap():
    for n in range(0, 9):
        parts = [shard_bounds(n, r, 3) for r in range(3)]
        assert [i for p in parts for i in range(n)[p]] == list(range(n))


def test_global_batchnorm_is_batchnorm_outside_a_process_group():
    torch.manual_seed(0)
    bn = torch.nn.Sequential(torch.nn.BatchNorm2d(4))
    ref = torch.nn.BatchNorm2d(4)
    convert_sync_batchnorm(bn, torch.device("cpu"))
    assert type(bn[0]) is GlobalBatchNorm2d and set(bn[0].state_dict()) == set(ref.state_dict())
    x = torch.randn(8, 4, 3, 3)
    torch.testing.assert_close(bn(x), ref(x))
    torch.testing.assert_close(bn[0].running_var, ref.running_var)
