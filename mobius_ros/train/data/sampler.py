"""Multi-dataset sampling (paper Tab. 5): each batch comes from one dataset, drawn by ratio.

`MultiDataset` concatenates datasets; `MultiDatasetBatchSampler` yields lists of its global
indices, one dataset per batch, datasets chosen with probability proportional to their ratios
and each dataset walked through in a fresh permutation per pass. Under DistributedDataParallel
every rank draws the same global sequence and takes every `world_size`-th batch, so ranks never
need to communicate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

# Sampling ratios of the paper's Tab. 5 (RefCOCO's 2.5 covers RefCOCO, RefCOCO+ and RefCOCOg).
TAB5_RATIOS: dict[str, float] = {
    'objects365': 1.5,
    'openimages': 1.5,
    'lvis': 1.5,
    'coco': 1.5,
    'bdd': 0.15,
    'refcoco': 2.5,
    'visualgenome': 2.0,
    'uvo': 0.2,
    'sa1b': 2.5,
    'ytvis19': 0.3,
    'ytvis21': 0.3,
    'ovis': 0.3,
    'refvos': 0.3,
}


class _Dataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class MultiDataset:
    """Concatenation of datasets; global index = offset of its dataset + local index."""

    def __init__(self, datasets: Sequence[_Dataset]) -> None:
        if not datasets:
            raise ValueError('need at least one dataset')
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(int).tolist()

    def __len__(self) -> int:
        return sum(self.sizes)

    def locate(self, index: int) -> tuple[int, int]:
        """Global index -> (dataset index, local index)."""
        d = int(np.searchsorted(self.offsets, index, side='right') - 1)
        return d, index - self.offsets[d]

    def __getitem__(self, index: int) -> Any:
        d, local = self.locate(index)
        return self.datasets[d][local]

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to datasets that draw augmentation from it."""
        for dataset in self.datasets:
            if hasattr(dataset, 'set_epoch'):
                dataset.set_epoch(epoch)


class MultiDatasetBatchSampler:
    """Batches of global indices into a `MultiDataset`, one dataset per batch.

    Args:
        sizes: number of items of each dataset (`MultiDataset.sizes`).
        ratios: relative sampling weight of each dataset (e.g. from `TAB5_RATIOS`).
        batch_size: items per batch.
        num_batches: batches per epoch (per rank).
        seed: base seed; `set_epoch` changes the draw like DistributedSampler's.
        rank, world_size: this process's share under DistributedDataParallel.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        ratios: Sequence[float],
        *,
        batch_size: int,
        num_batches: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(sizes) != len(ratios):
            raise ValueError(f'{len(sizes)} datasets but {len(ratios)} ratios')
        weights = np.asarray(ratios, np.float64) * (np.asarray(sizes) > 0)
        if (np.asarray(ratios) < 0).any() or weights.sum() <= 0:
            raise ValueError('ratios must be >= 0 with at least one non-empty dataset weighted')
        if not 0 <= rank < world_size:
            raise ValueError(f'rank {rank} outside world size {world_size}')
        self.sizes = list(sizes)
        self.probabilities = weights / weights.sum()
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        orders = [rng.permutation(n) for n in self.sizes]
        cursors = [0] * len(self.sizes)
        for step in range(self.num_batches * self.world_size):
            d = int(rng.choice(len(self.sizes), p=self.probabilities))
            batch = []
            for _ in range(self.batch_size):
                if cursors[d] == self.sizes[d]:  # a pass is done: reshuffle this dataset
                    orders[d] = rng.permutation(self.sizes[d])
                    cursors[d] = 0
                batch.append(self.offsets[d] + int(orders[d][cursors[d]]))
                cursors[d] += 1
            if step % self.world_size == self.rank:
                yield batch
