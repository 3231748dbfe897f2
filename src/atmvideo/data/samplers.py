"""Index samplers for training (shuffled, optionally repeated) and evaluation (disjoint shards).

All of them work with or without ``torch.distributed``: pass ``num_replicas``/``rank`` or let
them read the initialised process group. Call ``sampler.set_epoch(epoch)`` before every epoch so
that the shuffle changes between epochs and agrees across ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

__all__ = ["EvalShardSampler", "RepeatAugSampler", "TrainSampler", "world"]


def world(num_replicas: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """``(world size, rank)``: the arguments if given, else the process group's, else ``(1, 0)``."""
    if num_replicas is None:
        num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
    return num_replicas, rank


def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).tolist()


class TrainSampler(DistributedSampler):
    """torch's ``DistributedSampler`` over ``range(length)``: shuffled by (seed, epoch), split across ranks.

    Pads by repeating indices so every rank gets the same number of samples. Works without a
    process group too (world size 1 unless given).
    """

    def __init__(
        self,
        length: int,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        num_replicas, rank = world(num_replicas, rank)
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)


class RepeatAugSampler(Sampler[int]):
    """Repeated augmentation (DeiT / timm ``RepeatAugSampler``): each video ``num_repeats`` times an epoch.

    The copies of a video are consecutive in the shuffled order and dealt round-robin to the
    ranks, so under ``torch.distributed`` they land on different GPUs (different augmentations of
    one video in one step). An epoch is ``num_repeats`` times the dataset length in samples.
    """

    def __init__(
        self,
        length: int,
        *,
        num_repeats: int = 2,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if num_repeats < 1:
            raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
        self.length, self.num_repeats = length, num_repeats
        self.num_replicas, self.rank = world(num_replicas, rank)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.num_samples = math.ceil(length * num_repeats / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle of ``epoch`` (the same on every rank)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = _permutation(self.length, self.seed, self.epoch) if self.shuffle else list(range(self.length))
        repeated = [i for i in order for _ in range(self.num_repeats)]
        total = self.num_samples * self.num_replicas
        repeated += repeated[: total - len(repeated)]
        return iter(repeated[self.rank : total : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class EvalShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: disjoint shards, no padding, every sample exactly once.

    Ranks may get one sample more than others; gather predictions with their dataset index.
    """

    def __init__(self, length: int, *, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.length = length
        self.num_replicas, self.rank = world(num_replicas, rank)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do (evaluation order is fixed); present so every sampler takes the same calls."""

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))
