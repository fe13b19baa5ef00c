"""Fine-tuning the two-tower model on next-item prediction.

Each user's training history is cut into windows of ``model.max_history + 1`` items; at every
position the user tower predicts the next item. The loss is a softmax over the whole catalogue
(``train.loss: full``), or over in-batch plus uniformly sampled negatives with a log-popularity
(logQ) correction (``sampled``), for catalogues too large to score at every step.

Training keeps the protocol honest: early stopping on validation NDCG@10 (the test target is never
seen), a checkpoint after every epoch, and resumption from the last one after a crash. Shuffling
and dropout are seeded per epoch, so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bertrec.config import Params
from bertrec.data.split import Split
from bertrec.io import atomic_file
from bertrec.model.losses import full_softmax_loss, sampled_softmax_loss
from bertrec.model.replicas import Replicas
from bertrec.model.scorer import TowerScorer, build_towers
from bertrec.progress import Progress
from bertrec.ranking.evaluate import build_cases, reference_of, train_set
from bertrec.ranking.metrics import compute_metrics
from bertrec.ranking.scoring import Histories

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
PRIMARY = "NDCG@10"
# train.loss auto: the full softmax up to this many items, sampled above. Measured by
# bench/softmax_crossover.py: the largest catalogue where a full-softmax step costs at most 2x a sampled one.
FULL_SOFTMAX_MAX_ITEMS = 5_000


def choose_loss(loss: str, n_items: int) -> str:
    """``auto``: ``full`` up to FULL_SOFTMAX_MAX_ITEMS items, ``sampled`` above; else ``loss`` unchanged."""
    if loss != "auto":
        return loss
    return "full" if n_items <= FULL_SOFTMAX_MAX_ITEMS else "sampled"


@dataclass(frozen=True)
class TrainingWindows:
    """Training sequences, generated lazily: window ``s`` is ``items[starts[s]:ends[s]]``.

    :meth:`batch` right-aligns windows: ``inputs[b, t]`` is followed by ``targets[b, t]``; -1 is
    empty. A window's targets before ``first_target[s]`` (positions in ``items``) are context only:
    another window has them as targets. Only the flat histories and three offsets per window are
    held, never (windows, length).
    """

    items: np.ndarray  # (total,) every history, concatenated
    starts: np.ndarray  # (S,) first item of each window
    ends: np.ndarray  # (S,) one past its last item
    first_target: np.ndarray  # (S,) position of its first target
    length: int

    def __len__(self) -> int:
        return len(self.ends)

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of windows ``rows``: two (len(rows), length) int64 arrays."""
        starts, ends = self.starts[rows, None], self.ends[rows, None]
        at = ends - self.length - 1 + np.arange(self.length)[None, :]  # (B, L): position of each input
        filled = at >= starts
        inputs = np.where(filled, self.items[np.maximum(at, 0)], -1)
        counted = filled & (at + 1 >= self.first_target[rows, None])
        targets = np.where(counted, self.items[np.minimum(at + 1, len(self.items) - 1)], -1)
        return inputs, targets


def make_windows(histories: Histories, length: int, phase: np.ndarray | None = None) -> TrainingWindows:
    """Cut each history's targets (every item but its first) into windows of at most ``length``, from its end backwards.

    Without ``phase`` the newest window holds the last ``length`` targets, the next the ``length``
    before them, and so on. ``phase`` (per user, 0 to length - 1) moves every cut but the newest:
    the newest window then holds the last ``phase`` targets (with the items before them as its
    context), and the others follow from there. Every target is in exactly one window. Users in
    order; within a user, the newest window first.
    """
    lengths = histories.lengths()
    n_targets = np.maximum(lengths - 1, 0)
    if phase is None:
        phase = np.zeros(len(lengths), dtype=np.int64)
    newest = np.minimum(np.where(phase > 0, phase, length), n_targets)  # targets of each user's newest window
    per_user = np.where(n_targets > 0, 1 + -(-(n_targets - newest) // length), 0)  # windows per user
    user = np.repeat(np.arange(len(lengths)), per_user)
    nth = np.arange(per_user.sum()) - np.repeat(np.cumsum(per_user) - per_user, per_user)  # 0 = newest
    if len(user) == 0:
        raise ValueError("no training history has two or more items")
    first, last = histories.indptr[:-1][user], histories.indptr[1:][user] - 1
    top = np.where(nth == 0, last, last - newest[user] - (nth - 1) * length)  # each window's newest target
    bottom = np.where(nth == 0, last - newest[user], top - length)  # the newest position it does not predict
    ends = top + 1
    starts = np.maximum(first, ends - length - 1)
    return TrainingWindows(
        np.asarray(histories.items, dtype=np.int64), starts, ends, np.maximum(bottom + 1, first + 1), length
    )


def epoch_windows(histories: Histories, length: int, phase: str, seed: int, epoch: int) -> TrainingWindows:
    """This epoch's windows: ``fixed`` cuts every epoch alike; ``random`` draws each user's phase from (seed, epoch)."""
    if phase == "fixed":
        return make_windows(histories, length)
    return make_windows(histories, length, np.random.default_rng([seed, epoch, 1]).integers(0, length, len(histories)))


@dataclass
class EpochLog:
    epoch: int
    loss: float
    valid: dict[str, float]
    seconds: float


@dataclass
class TrainResult:
    scorer: TowerScorer
    epochs: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    members: list[dict] = field(default_factory=list)  # an ensemble's members: seed, best epoch, validation metrics


def _schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _sampled_batch(
    scorer: TowerScorer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    log_pop: torch.Tensor,
    known_items: torch.Tensor,
    negatives: int,
    use_logq: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """In-batch targets plus negatives drawn uniformly from the training items, each once, with logQ."""
    model, n_known = scorer.model, len(known_items)
    valid = targets >= 0
    n_pos = int(valid.sum())
    uniform = known_items[torch.randint(0, n_known, (negatives,), generator=generator).to(known_items.device)]
    # History items join the candidates: the user tower needs their vectors anyway.
    pool = torch.cat([targets[valid], uniform, inputs[inputs >= 0]])
    candidates, inverse = torch.unique(pool, return_inverse=True)
    vectors = scorer.item_vectors(candidates)  # (C, d)
    history = scorer.history_vectors(inputs, vectors, candidates)
    users = model.user_vectors(history, inputs < 0)[valid]  # (N, d)
    # Expected occurrences of each candidate: in-batch draws follow popularity, the rest are uniform.
    log_q = torch.log(n_pos * log_pop.exp()[candidates] + negatives / n_known) if use_logq else None
    return sampled_softmax_loss(users, vectors, inverse[:n_pos], log_q, model.config.temperature)


@dataclass(frozen=True)
class TextSamples:
    """Training samples of the ``text`` user tower: encoder features of a history's titles, next item."""

    features: torch.Tensor  # (S, text_dim)
    targets: torch.Tensor  # (S,)


def make_text_samples(scorer: TowerScorer, histories: Histories, positions: int) -> TextSamples:
    """The last ``positions`` next-item predictions of each history, with the titles read before each."""
    indptr, items = [0], []
    targets = []
    for u in range(len(histories)):
        h = histories[u]
        for t in range(max(1, len(h) - positions), len(h)):
            items.extend(h[:t])
            indptr.append(len(items))
            targets.append(h[t])
    contexts = Histories(np.asarray(indptr, dtype=np.int64), np.asarray(items, dtype=np.int64))
    features = torch.cat(
        [
            scorer.user_text_features(contexts.slice(s, min(s + 256, len(contexts))))
            for s in range(0, len(contexts), 256)
        ]
    )
    return TextSamples(features, torch.tensor(targets, dtype=torch.int64, device=scorer.device))


def _checkpoint_path(folder: Path, epoch: int) -> Path:
    return folder / CHECKPOINTS / f"epoch-{epoch:04d}.pt"


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted((Path(folder) / CHECKPOINTS).glob("epoch-*.pt"))
    return found[-1] if found else None


class StepLoss(torch.nn.Module):
    """One step's loss on a batch of training rows, as a module call (so that DistributedDataParallel can wrap it).

    Its submodules are the towers and the text features: every trained weight. ``scale`` multiplies
    the loss (a rank's share of the global batch's targets, times the ranks).
    """

    def __init__(self, scorer: TowerScorer, kind: str, data, prior, log_pop, known_items, tp) -> None:
        super().__init__()
        self.towers = scorer.model
        self.features = scorer.text_features
        self.scorer, self.kind, self.data = scorer, kind, data
        self.prior, self.log_pop, self.known_items, self.tp = prior, log_pop, known_items, tp

    def targets(self, rows: np.ndarray) -> int:
        """How many next-item targets ``rows`` hold (the loss is their mean)."""
        if self.kind == "text":
            return len(rows)
        return int((self.data.batch(rows)[1] >= 0).sum())

    def forward(self, rows: np.ndarray, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
        scorer, model, device, tp = self.scorer, self.towers, self.scorer.device, self.tp
        temperature = model.config.temperature
        if self.kind == "text":
            users = model.users(self.data.features[rows]).unsqueeze(1)  # (B, 1, d)
            targets = self.data.targets[rows].unsqueeze(1)
            loss = full_softmax_loss(users, scorer.item_vectors(), targets, temperature, self.prior)
        elif self.kind == "full":
            inputs, targets = (torch.from_numpy(a).to(device) for a in self.data.batch(rows))
            vectors = scorer.item_vectors()
            users = model.user_vectors(scorer.history_vectors(inputs, vectors), inputs < 0)
            loss = full_softmax_loss(users, vectors, targets, temperature, self.prior)
        else:
            inputs, targets = (torch.from_numpy(a).to(device) for a in self.data.batch(rows))
            loss = _sampled_batch(
                scorer, inputs, targets, self.log_pop, self.known_items, tp.negatives, tp.logq, generator
            )
        return loss * scale


def train(
    params: Params,
    split: Split,
    items: pd.DataFrame,
    work_dir: Path,
    on_epoch_end: Callable[[EpochLog], None] | None = None,
    replicas: Replicas | None = None,
    scorer: TowerScorer | None = None,
) -> TrainResult:
    """Train on ``split.train``, early-stopping on ``split.valid``; checkpoints go to ``work_dir``.

    Resumes from the newest checkpoint in ``work_dir`` when one exists. ``on_epoch_end`` is called
    after each epoch's checkpoint is written (tracking hooks in; an exception stops training).
    ``replicas``: this process's place in a data-parallel run (only rank 0 writes checkpoints);
    ``scorer``: the fresh model to train (default: built here from params, seeded by ``train.seed``).
    """
    tp = params.train
    replicas = replicas or Replicas()
    torch.manual_seed(tp.seed)
    scorer = scorer if scorer is not None else build_towers(params, split, items)
    model, device = scorer.model, scorer.device
    train = train_set(split, items)
    text_users = params.model.user_encoder == "text"
    if text_users:
        data = make_text_samples(scorer, train.histories(), tp.text_user_positions)
        n_samples = len(data.targets)
    else:
        histories = train.histories()
        data = make_windows(histories, params.model.max_history)  # fixed cuts; window_phase random recuts per epoch
        n_samples = len(data)
    popularity = torch.tensor(train.popularity(), dtype=torch.float32) + 1.0
    log_pop = torch.log(popularity / popularity.sum()).to(device)
    # Items with no training interaction did not exist at training time (cold_items' new items):
    # they are never negatives, or the text tower would learn to push unseen texts down.
    known = scorer.model.items.known
    prior = torch.where(known, 0.0, float("-inf")) + (tp.logit_adjust * log_pop if tp.logit_adjust > 0 else 0.0)
    known_items = torch.nonzero(known).squeeze(1)
    reference = reference_of(train)
    valid_cases = build_cases(split, "valid").sample(tp.valid_users, tp.seed)
    loss_kind = choose_loss(tp.loss, split.n_items)
    step_loss = StepLoss(scorer, "text" if text_users else loss_kind, data, prior, log_pop, known_items, tp)
    stepper = replicas.wrap(step_loss, device)
    log.info(
        "training on %d %s, %s softmax over %d items; early stopping on %d validation users%s",
        n_samples,
        "samples" if text_users else "windows",
        loss_kind,
        split.n_items,
        len(valid_cases.users),
        f"; rank {replicas.rank} of {replicas.world}" if replicas.distributed else "",
    )

    tower_params = [p for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": tower_params, "lr": tp.lr}]
    encoder_params = [p for p in scorer.text_features.parameters() if p.requires_grad] if scorer.text_features else []
    if encoder_params:
        groups.append({"params": encoder_params, "lr": tp.encoder_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=tp.weight_decay)
    steps_per_epoch = math.ceil(n_samples / tp.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(tp.warmup_steps, tp.epochs * steps_per_epoch))

    result = TrainResult(scorer)
    start_epoch, best_state, stale = 1, None, 0
    fingerprint = run_fingerprint(params, split)
    resume = latest_checkpoint(work_dir)
    if (
        resume is not None
        and torch.load(resume, map_location="cpu", weights_only=False).get("fingerprint") != fingerprint
    ):
        log.warning("checkpoints in %s belong to another configuration or split; starting afresh", resume.parent)
        shutil.rmtree(resume.parent)
        resume = None
    if resume is not None:
        state = torch.load(resume, map_location=device, weights_only=False)
        scorer.load_state_dict(state["scorer"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        result.epochs = [EpochLog(**e) for e in state["epochs"]]
        result.best_epoch, result.best_valid = state["best_epoch"], state["best_valid"]
        best_state, stale, start_epoch = state["best_state"], state["stale"], state["epoch"] + 1
        log.info("resumed from %s (epoch %d)", resume, state["epoch"])

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    lead = replicas.rank == 0
    for epoch in range(start_epoch, tp.epochs + 1):
        if stale >= tp.patience:
            break
        began = time.perf_counter()
        seed = tp.seed * 100_003 + epoch + replicas.rank * 7_919  # dropout and negatives differ by rank
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        if not text_users and tp.window_phase != "fixed":
            step_loss.data = epoch_windows(histories, params.model.max_history, tp.window_phase, tp.seed, epoch)
            n_samples = len(step_loss.data)
        order = np.random.default_rng([tp.seed, epoch]).permutation(n_samples)  # the same on every rank
        model.train()
        losses = []
        meter = (
            Progress(f"epoch {epoch}", n_samples, "samples" if text_users else "windows", every=30.0) if lead else None
        )
        for start in range(0, len(order), tp.batch_size):
            batch = order[start : start + tp.batch_size]
            rows = replicas.part(batch)
            scale = 1.0
            if replicas.distributed:  # the mean over the global batch's targets, once gradients are averaged
                mine = step_loss.targets(rows) if len(rows) else 0
                scale = mine * replicas.world / max(replicas.sum(mine, device), 1.0)
                if not len(rows):  # a short last batch: this rank still joins the step, with weight 0
                    rows = batch[:1]
            with autocast:
                loss = stepper(rows, generator, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tower_params + encoder_params, tp.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()) / replicas.world)
            if meter is not None:
                meter.advance(len(batch))
        if meter is not None:
            meter.finish()
        topk = replicas.rank_cases(scorer, valid_cases, 20, params.eval.batch_size)
        valid = compute_metrics(topk, valid_cases.positives, reference, (10, 20), valid_cases.candidates)
        epoch_loss = replicas.sum(float(np.sum(losses)), device) / max(len(losses), 1)  # the global batches' mean loss
        entry = EpochLog(epoch, epoch_loss, valid, time.perf_counter() - began)
        result.epochs.append(entry)
        if valid[PRIMARY] > result.best_valid.get(PRIMARY, -1.0):
            result.best_epoch, result.best_valid, stale = epoch, valid, 0
            best_state = {k: v.detach().clone() for k, v in scorer.state_dict().items()}
        else:
            stale += 1
        log.info("epoch %d: loss %.4f, valid NDCG@10 %.4f (%.1fs)", epoch, entry.loss, valid[PRIMARY], entry.seconds)
        if lead:
            _save_checkpoint(work_dir, epoch, scorer, optimizer, scheduler, result, best_state, stale, fingerprint)
        if on_epoch_end is not None:
            on_epoch_end(entry)
    if best_state is not None:
        scorer.load_state_dict(best_state)
    return result


def run_fingerprint(params: Params, split: Split) -> str:
    """What a checkpoint must share with a run to be resumed by it (epochs and patience may change)."""
    config = {
        "model": params.model.model_dump(mode="json"),
        "train": params.train.model_dump(mode="json", exclude={"epochs", "patience", "device"}),
        "split": split.name,
        "train_rows": pd.util.hash_pandas_object(split.train[["user_idx", "item_idx"]], index=False).sum().item(),
    }
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _save_checkpoint(work_dir, epoch, scorer, optimizer, scheduler, result, best_state, stale, fingerprint) -> None:
    path = _checkpoint_path(work_dir, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "scorer": scorer.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epochs": [asdict(e) for e in result.epochs],
        "best_epoch": result.best_epoch,
        "best_valid": result.best_valid,
        "best_state": best_state,
        "stale": stale,
    }
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
    for old in sorted(path.parent.glob("epoch-*.pt"))[:-1]:
        old.unlink()
