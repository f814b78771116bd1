"""Training data: the LLaVA-format dataset, a seeded per-epoch order, and batches that remember their samples.

The order is a function of (seed, epoch) only, so a resumed run, a run on another number of processes and an
uninterrupted run all see the same sequence of micro-batches. Accelerate deals whole micro-batches out to the
processes round-robin (process r gets micro-batches r, r + P, r + 2P, ...), which `micro_batch_index` undoes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lvprune.data.collator import LlavaCollator

INDEX_KEY = "sample_index"


class EpochSampler(Sampler[int]):
    """A random permutation of `range(size)` drawn from `seed + epoch`; call `use_epoch` before each pass.

    Not `set_epoch`: accelerate's prepared loaders call a sampler's `set_epoch` with their own pass counter,
    which restarts at 0 in a resumed process and would replay epoch 0's order after a resume in a later epoch.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class Indexed(Dataset):
    """`dataset[i]` with the sample's index added under `sample_index`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], INDEX_KEY: index}


@dataclass(frozen=True)
class IndexedCollator:
    """`LlavaCollator` that also returns the batch's sample indices as `sample_index` [B] long."""

    collator: LlavaCollator

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator([{k: v for k, v in e.items() if k != INDEX_KEY} for e in examples])
        batch[INDEX_KEY] = torch.tensor([e[INDEX_KEY] for e in examples])
        return batch


def build_dataloader(dataset, pad_token_id: int, config, token_inputs=(), device_type: str = "cpu"
                     ) -> tuple[DataLoader, EpochSampler]:
    """A DataLoader of `config.per_device_batch_size` over `dataset` in seeded order, and its sampler;
    `token_inputs`: the family's per-token inputs, padded like `input_ids`.

    The last incomplete micro-batch of an epoch is dropped, so every micro-batch has the same size. Workers
    (`num_workers`, see `worker_count`) stay alive across epochs.
    """
    sampler = EpochSampler(len(dataset), config.seed)
    collator = IndexedCollator(LlavaCollator(pad_token_id=pad_token_id, padding_side=config.padding_side,
                                             token_inputs=tuple(token_inputs)))
    workers = worker_count(config.num_workers, device_type)
    if workers:
        # The workers fork from a process whose fast tokenizer has run: its thread pool must not be inherited.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    loader = DataLoader(Indexed(dataset), batch_size=config.per_device_batch_size, sampler=sampler,
                        collate_fn=collator, num_workers=workers, persistent_workers=workers > 0, drop_last=True)
    return loader, sampler


def worker_count(num_workers: int | None, device_type: str) -> int:
    """`num_workers` as given, else 4 on an accelerator (at most this process's share of the cores, less the one
    it trains on) and 0 on the CPU."""
    if num_workers is not None:
        return num_workers
    if device_type == "cpu":
        return 0
    share = len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(0, min(4, share - 1))


def micro_batch_index(local_index: int, process_index: int, num_processes: int) -> int:
    """Position in the global micro-batch sequence of this process's `local_index`-th micro-batch."""
    return local_index * num_processes + process_index


def micro_batches(accelerator, loader, sampler: EpochSampler, start: int):
    """Yield `(local_index, batch)` from local micro-batch `start` on, pass after pass over the data.

    Resuming at `start` skips the batches already seen in the current pass (`skip_first_batches`) instead of
    replaying them.
    """
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError("the dataset is smaller than one global micro-batch; lower per_device_batch_size.")
    epoch, skip = divmod(start, per_epoch)
    index = start
    while True:
        sampler.use_epoch(epoch)
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            yield index, batch
            index += 1
        epoch, skip = epoch + 1, 0
