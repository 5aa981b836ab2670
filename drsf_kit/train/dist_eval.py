"""Evaluation on several processes: each scores its share of the batches, rank 0 gets the totals.

The single-process evaluation cuts a domain's images into batches of ``eval.batch_size`` in order;
under torchrun batch ``b`` of that same cut goes to rank ``b % world_size``. Every image is therefore
scored in exactly the batch it would have had alone (detectors pad a batch to its largest image, so
the batch's make-up matters), and the gathered results are the single-process results: detections are
put back in image order before scoring, segmentation confusion matrices are summed (integers, exact).
One process gets every batch and no collective runs.
"""

from __future__ import annotations

from typing import Any

import torch

from drsf_kit.train.distributed import _collective_device, gather_objects, get_rank, is_main_process, world_size


def shard_batches(num_items: int, batch_size: int, rank: int | None = None, world: int | None = None) -> list[list[int]]:
    """The index batches this process scores: the single-process batches ``rank``, ``rank + world``, ..."""
    rank = get_rank() if rank is None else rank
    world = world_size() if world is None else world
    size = max(1, int(batch_size))
    batches = [list(range(i, min(i + size, num_items))) for i in range(0, num_items, size)]
    return batches[rank::world]


def gather_in_order(local: list[tuple[int, Any]]) -> list[Any] | None:
    """``(index, item)`` pairs of every process, merged by index, on rank 0 (None on the others)."""
    parts = gather_objects(local)
    if not is_main_process():
        return None
    return [item for _, item in sorted((pair for part in parts for pair in part), key=lambda p: p[0])]


def sum_confusion(meter) -> None:
    """Add every process's confusion matrix and image count into ``meter`` (in place, on every process)."""
    if world_size() == 1:
        return
    counts = torch.cat([meter.confusion.flatten(), torch.tensor([meter.num_images], dtype=torch.int64)])
    counts = counts.to(_collective_device())
    torch.distributed.all_reduce(counts)
    counts = counts.cpu()
    meter.confusion = counts[:-1].reshape(meter.confusion.shape).clone()
    meter.num_images = int(counts[-1])
