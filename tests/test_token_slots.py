"""Token bookkeeping primitives against sort-based references."""

import pytest
import torch

from lvprune.core.selection import top_counts
from lvprune.core.token_slots import compact, gather_rows, take


@pytest.mark.parametrize("seed", range(5))
def test_compact_matches_a_stable_sort(seed):
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(4, 3, 37, generator=generator) < torch.rand(4, 3, 1, generator=generator)
    keep[0, 0] = False  # a row that keeps nothing
    keep[1, 2] = True   # a row that keeps everything
    index, real = compact(keep)
    width = int(keep.sum(-1).max())
    # Reference: kept slots sort after dropped ones, each group in its original order; take the last `width`.
    positions = torch.arange(keep.shape[-1])
    expected = torch.where(keep, positions + keep.shape[-1], positions).argsort(dim=-1)[..., keep.shape[-1] - width:]
    assert torch.equal(index, expected)
    assert torch.equal(real, keep.gather(-1, expected))
    assert torch.equal(real.sum(-1), keep.sum(-1))


def test_top_counts_keeps_each_rows_best():
    generator = torch.Generator().manual_seed(0)
    score = torch.randn(3, 2, 20, generator=generator)
    score[2, :, 5:] = float("-inf")  # fewer finite entries than the count asks for
    counts = torch.tensor([0, 7, 9])
    chosen = top_counts(score, counts)
    rank = score.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    finite = score.isfinite()  # among -inf entries any may fill a count; callers mask them out
    assert torch.equal(chosen & finite, (rank < counts[:, None, None]) & finite)
    assert chosen.sum(-1).tolist() == [[0, 0], [7, 7], [9, 9]]


def test_take_matches_gather():
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(2, 3, 11, 4, generator=generator)  # [B, h, K, D], a cache layer
    index = torch.randint(0, 11, (2, 3, 7), generator=generator)
    expected = keys.gather(2, index[..., None].expand(-1, -1, -1, 4))
    assert torch.equal(take(keys, index), expected)
    assert take(keys, index[..., :0]).shape == (2, 3, 0, 4)  # nothing kept anywhere


@pytest.mark.parametrize("batch", [1, 3])
def test_gather_rows_matches_gather_and_broadcasts_batch_one(batch):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 9, 5, generator=generator)
    index = torch.randint(0, 9, (3, 4), generator=generator)
    expected = x.expand(3, -1, -1).gather(1, index[..., None].expand(-1, -1, 5))
    assert torch.equal(gather_rows(x, index), expected)
