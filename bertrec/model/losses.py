"""Training losses of the two-tower model: a softmax over the whole catalogue or over sampled candidates.

Scores are dot products of unit vectors divided by a temperature. The sampled loss takes a logQ
correction, so that items sampled often as negatives are not pushed down for being popular.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def full_softmax_loss(
    users: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over the catalogue: users (B, L, d), items (n, d), targets (B, L) with -1 ignored.

    ``prior`` (n,), when given, is added to the logits during training only (logit adjustment):
    the model then learns scores with that much popularity taken out.
    """
    valid = targets >= 0
    logits = users[valid] @ items.T / temperature  # (N, n): only positions that have a target
    if prior is not None:
        logits = logits + prior
    return F.cross_entropy(logits, targets[valid])


def logq_correct(logits: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Subtract each candidate's log sampling probability: frequently sampled items lose the most."""
    return logits - log_q


def sampled_softmax_loss(
    users: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    log_q: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Cross-entropy over a candidate set: users (N, d), candidates (C, d), targets (N,) indices into C.

    ``log_q`` (C,): log of how often each candidate is expected in the set; None for no correction.
    """
    logits = users @ candidates.T / temperature  # (N, C)
    if log_q is not None:
        logits = logq_correct(logits, log_q)
    return F.cross_entropy(logits, targets)
