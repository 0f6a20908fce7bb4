"""Training loop of Algorithm 1 (DMF paper) with early stopping, checkpoints and resume.

Each epoch pairs every training interaction (target rating / max rating for the nce loss, 1 for
ce) with ``num_negatives`` items the user never interacted with (target 0), drawn by
:func:`dmfx.ops.sample_negatives` on the training device, shuffles the pairs and takes Adam steps
on mini-batches. Negatives are redrawn every epoch (``resample="epoch"``, what most
re-implementations do) or drawn once (``"once"``, the paper's literal reading). Every random
choice derives from (seed, epoch), so a run resumed from a checkpoint retraces the uninterrupted
run exactly on CPU.
"""
from __future__ import annotations

import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from . import ops
from .data import Split
from .evaluate import evaluate
from .models import Recommender
from .optim import RowSparseAdam

__all__ = ["TrainConfig", "fit", "make_optimizer", "save_checkpoint", "load_checkpoint"]


@dataclass
class TrainConfig:
    """Hyperparameters of a run; the defaults are the paper's (Section 4)."""

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-4
    num_negatives: int = 7
    resample: str = "epoch"  # "epoch" or "once"
    loss: str = "nce"  # "nce" (t = rating / max rating) or "ce" (t = 1)
    patience: int = 5  # epochs without a better validation NDCG@topk before stopping; 0: never
    topk: int = 10
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.resample not in ("epoch", "once"):
            raise ValueError(f"resample must be 'epoch' or 'once', got {self.resample!r}")
        if self.loss not in ("nce", "ce"):
            raise ValueError(f"loss must be 'nce' or 'ce', got {self.loss!r}")
        for name in ("epochs", "batch_size", "topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_negatives < 0 or self.patience < 0 or self.lr <= 0:
            raise ValueError("num_negatives and patience must be >= 0 and lr > 0")


@dataclass
class TrainState:
    """Everything a checkpoint must hold to continue a run where it stopped."""

    epoch: int = 0  # epochs completed
    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = -1.0
    best_state: Optional[dict] = None
    bad_epochs: int = 0


class SplitAdam:
    """Adam on the dense gradients and RowSparseAdam on the row-sparse ones, stepped together."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer):
        self.dense, self.sparse = dense, sparse

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        self.sparse.step()

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


def make_optimizer(model: Recommender, config: TrainConfig):
    """Adam with ``config.lr``: the fused implementation (one pass per tensor, no temporaries)
    where every parameter is on a device torch has it for (CPU and CUDA). Parameters with
    row-sparse gradients (``model.sparse_grad_parameters()``) get :class:`dmfx.optim.RowSparseAdam`,
    which updates only the rows present in each gradient."""
    sparse_ids = {id(p) for p in model.sparse_grad_parameters()}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
                for p in dense)
    adam = torch.optim.Adam(dense, lr=config.lr, fused=fused)
    if not sparse_ids:
        return adam
    return SplitAdam(adam, RowSparseAdam(model.sparse_grad_parameters(), lr=config.lr))


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: tensors allocated on a CUDA device, else the process's resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from (run seed, epoch, purpose): independent streams, stable across runs."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] & (2**63 - 1))


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Written to a temporary file and renamed, so a kill never leaves a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=False)


class EpochPairs:
    """The training pairs of one epoch, built on the training device."""

    def __init__(self, split: Split, config: TrainConfig, device: torch.device):
        train = split.train
        self.config, self.device = config, device
        self.num_items = train.num_items
        self.matrix = train.csr("binary", device=device)
        self.users = torch.from_numpy(train.users).to(device)
        self.items = torch.from_numpy(train.items).to(device)
        ratings = torch.from_numpy(train.ratings).to(device)
        if config.loss == "nce":
            self.targets = ratings / float(train.max_rating)
        else:
            self.targets = torch.ones_like(ratings)
        self.fixed_negatives = None

    def negatives(self, epoch: int) -> torch.Tensor:
        k = self.config.num_negatives
        round_ = epoch if self.config.resample == "epoch" else 0
        if self.config.resample == "once" and self.fixed_negatives is not None:
            return self.fixed_negatives
        out = ops.sample_negatives(self.matrix.indptr, self.matrix.indices, self.users,
                                   self.num_items, k, seed=derive_seed(self.config.seed, round_, 1))
        if self.config.resample == "once":
            self.fixed_negatives = out
        return out

    def epoch(self, epoch: int):
        """(users, items, targets, permutation) of all pairs of ``epoch``."""
        k = self.config.num_negatives
        negatives = self.negatives(epoch)
        users = torch.cat([self.users, self.users.repeat_interleave(k)])
        items = torch.cat([self.items, negatives.flatten()])
        targets = torch.cat([self.targets, self.targets.new_zeros(negatives.numel())])
        g = torch.Generator().manual_seed(derive_seed(self.config.seed, epoch, 2))
        order = torch.randperm(users.numel(), generator=g).to(self.device)
        return users, items, targets, order


def fit(model: Recommender, split: Split, config: TrainConfig, *,
        checkpoint: str | os.PathLike | None = None, resume: bool = False,
        extra: dict | None = None,
        on_epoch_end: Callable[[int, dict], None] | None = None) -> TrainState:
    """Trains ``model`` on ``split.train`` and keeps the weights of the best validation epoch.

    Args:
        checkpoint: file written (atomically) after every epoch; with ``resume=True`` and an
            existing file, training continues from it.
        extra: stored in the checkpoint as is (the CLI keeps its data and model settings there).
        on_epoch_end: called with (epoch, history entry) after each epoch.

    Returns:
        The final :class:`TrainState`; the model holds the best epoch's weights.
    """
    device = next(model.parameters()).device
    state = TrainState()
    optimizer = make_optimizer(model, config)
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        saved = load_checkpoint(checkpoint, map_location=device)
        model.load_state_dict(saved["model_state"])
        optimizer.load_state_dict(saved["optimizer"])
        state = TrainState(**saved["train_state"])
    pairs = EpochPairs(split, config, device)
    has_valid = len(split.valid_users) > 0
    stopped_early = config.patience > 0 and state.bad_epochs >= config.patience
    for epoch in range(state.epoch + 1, 0 if stopped_early else config.epochs + 1):
        start = time.perf_counter()
        loss = _train_epoch(model, optimizer, pairs, epoch, config)
        seconds = time.perf_counter() - start
        entry = {"epoch": epoch, "loss": loss, "seconds": seconds,
                 "pairs_per_s": pairs.users.numel() * (1 + config.num_negatives) / seconds,
                 "peak_memory_mb": peak_memory_mb(device)}
        if has_valid:
            entry["valid"] = evaluate(model, split, "valid", ks=(config.topk,))
            metric = entry["valid"][f"ndcg@{config.topk}"]
        else:
            metric = -loss
        state.history.append(entry)
        state.epoch = epoch
        if metric > state.best_metric:
            state.best_metric, state.best_epoch, state.bad_epochs = metric, epoch, 0
            state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            state.bad_epochs += 1
        stop = config.patience > 0 and state.bad_epochs >= config.patience
        if checkpoint is not None:
            save_checkpoint(checkpoint, {
                "model_state": model.state_dict(), "optimizer": optimizer.state_dict(),
                "train_state": asdict(state), "train_config": asdict(config), **(extra or {}),
            })
        if on_epoch_end is not None:
            on_epoch_end(epoch, entry)
        if stop:
            break
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    return state


def _train_epoch(model: Recommender, optimizer, pairs: EpochPairs, epoch: int,
                 config: TrainConfig) -> float:
    model.train()
    users, items, targets, order = pairs.epoch(epoch)
    # Shuffled once, so each batch is a slice (a view), not three gathers per step.
    users, items, targets = users[order], items[order], targets[order]
    batches = list(zip(users.split(config.batch_size), items.split(config.batch_size),
                       targets.split(config.batch_size)))
    total = torch.zeros((), device=users.device, dtype=torch.float64)
    bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False,
               disable=not config.progress, mininterval=0.5)
    start = time.perf_counter()
    for step, (batch_users, batch_items, batch_targets) in enumerate(bar, 1):
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(batch_users, batch_items, batch_targets)
        loss.backward()
        optimizer.step()
        total += loss.detach() * batch_users.numel()
        if step % 100 == 0 and config.progress:  # reading the loss syncs: only now and then
            done = step * config.batch_size
            bar.set_postfix(loss=f"{total.item() / done:.4f}",
                            pairs_s=f"{done / (time.perf_counter() - start):,.0f}")
    return total.item() / max(1, users.numel())
