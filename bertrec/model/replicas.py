"""The data-parallel group of a training process: which part of each batch it takes, and how ranks agree.

One process is rank 0 of 1 and changes nothing. Ray Train's workers (:mod:`bertrec.compute.train`)
are ranks of an initialised ``torch.distributed`` group, and :func:`bertrec.model.train.train`
asks this object for everything that differs between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bertrec.model.scorer import TowerScorer
from bertrec.ranking.evaluate import Cases, rank_cases


@dataclass(frozen=True)
class Replicas:
    """The data-parallel group a training process belongs to: rank ``rank`` of ``world`` (one process: 0 of 1).

    With ``world > 1`` (Ray Train's workers, :mod:`bertrec.compute.train`), ``torch.distributed`` is
    initialised; each step's global batch is cut into ``world`` parts, one per rank; the step's loss
    is weighted so that the averaged gradients are those of the whole batch; validation users are
    ranked in parts and the lists gathered, so every rank computes the same metrics.
    """

    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def part(self, rows: np.ndarray) -> np.ndarray:
        """This rank's part of a global batch (contiguous; may be empty at the end of an epoch)."""
        return np.array_split(rows, self.world)[self.rank] if self.distributed else rows

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``module`` in DistributedDataParallel (gradients averaged over ranks in backward), or as it is."""
        if not self.distributed:
            return module
        ids = [device] if device.type == "cuda" else None
        # buffers (token ids of a tuned encoder, the known-item mask) are equal on every rank: never re-sent
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    def sum(self, value: float, device: torch.device) -> float:
        """``value`` summed over ranks."""
        if not self.distributed:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(total)
        return float(total.item())

    def rank_cases(self, scorer: TowerScorer, cases: Cases, k: int, batch_size: int) -> np.ndarray:
        """Top-``k`` of every case: each rank ranks its part of the users, and the parts are gathered in order."""
        if not self.distributed:
            return rank_cases(scorer, cases, k, batch_size)
        bounds = [round(i * len(cases.users) / self.world) for i in range(self.world + 1)]
        mine = rank_cases(scorer, cases.slice(bounds[self.rank], bounds[self.rank + 1]), k, batch_size)
        gathered: list = [None] * self.world
        torch.distributed.all_gather_object(gathered, mine)
        return np.concatenate(gathered)
