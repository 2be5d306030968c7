"""Multi-dataset sampler: one dataset per batch, ratios respected, DDP shards disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from mobius_ros.train.data.sampler import TAB5_RATIOS, MultiDataset, MultiDatasetBatchSampler


def test_one_dataset_per_batch_and_ratios() -> None:
    sizes = [10, 50, 7]
    sampler = MultiDatasetBatchSampler(sizes, [1.0, 3.0, 0.0], batch_size=4, num_batches=400)
    data = MultiDataset([list(range(n)) for n in sizes])
    counts = np.zeros(3)
    for batch in sampler:
        owners = {data.locate(i)[0] for i in batch}
        assert len(owners) == 1 and len(batch) == 4
        counts[owners.pop()] += 1
    assert counts[2] == 0
    assert counts[1] / counts.sum() == pytest.approx(0.75, abs=0.06)


def test_each_dataset_is_walked_as_a_permutation() -> None:
    sampler = MultiDatasetBatchSampler([6], [1.0], batch_size=3, num_batches=2, seed=1)
    seen = [i for batch in sampler for i in batch]
    assert sorted(seen) == list(range(6))
    sampler.set_epoch(1)
    assert [i for b in sampler for i in b] != seen


def test_ranks_split_the_same_sequence() -> None:
    kwargs = {'batch_size': 2, 'num_batches': 5, 'seed': 3}
    full = list(MultiDatasetBatchSampler([20, 20], [1, 1], world_size=1, **kwargs))
    kwargs['num_batches'] = 5
    r0 = list(MultiDatasetBatchSampler([20, 20], [1, 1], rank=0, world_size=2, **kwargs))
    r1 = list(MultiDatasetBatchSampler([20, 20], [1, 1], rank=1, world_size=2, **kwargs))
    assert r0[:3] == full[0:5:2] and r1[:2] == full[1:5:2]


def test_multidataset_indexing_and_tab5() -> None:
    data = MultiDataset([['a', 'b'], ['c'], ['d', 'e']])
    assert [data[i] for i in range(len(data))] == list('abcde')
    assert data.locate(3) == (2, 0)
    assert TAB5_RATIOS['sa1b'] == 2.5 and TAB5_RATIOS['bdd'] == 0.15
    with pytest.raises(ValueError):
        MultiDatasetBatchSampler([3], [1, 2], batch_size=1, num_batches=1)
