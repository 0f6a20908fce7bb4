"""Training loop of Algorithm 1 (DMF paper) with early stopping, checkpoints and resume.

Each epoch pairs every training interaction (target rating / max rating for the nce loss, 1 for
ce; max over the training ratings) with ``num_negatives`` items the user has no training
interaction with (target 0; a held-out item can be one, as in the paper's Y-), drawn by
:func:`dmfx.ops.sample_negatives` on the training device, shuffles the pairs and takes Adam steps
on mini-batches. Negatives are redrawn every epoch (``resample="epoch"``, what most
re-implementations do) or drawn once (``"once"``, the paper's literal reading). Every random
choice derives from (seed, epoch), so a run resumed from a checkpoint retraces the uninterrupted
run exactly on CPU. A checkpoint taken inside an epoch (``checkpoint_every``, or the step where
``max_steps`` cuts the run) holds the epoch's progress: its steps, loss so far and the state of
torch's generator (dropout), so a resume goes on with the epoch's next batch.

``pairs="epoch"`` builds the epoch's pairs in full and shuffles them together (Algorithm 1's
order); they cost ~(1 + num_negatives) x 20-32 bytes per rating, ~10 GB at 50M ratings and 7
negatives. ``pairs="batch"`` shuffles only the observed pairs and draws each batch's negatives as
the batch is taken (the sampler is a pure function of its seed), so the pairs cost one batch and
a shuffled index of the ratings (4 bytes each): a batch holds its observed pairs and their
negatives together, as RecBole and NCF's code do, rather than pairs shuffled across the epoch.
"""
from __future__ import annotations

import math
import os
import resource
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from . import ops
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import Split
from .evaluate import PREFIX, PROTOCOLS, evaluate
from .models import Recommender
from .optim import RowSparseAdam

__all__ = ["TrainConfig", "fit", "make_optimizer", "LocalRun", "RESUMABLE_CHANGES", "ResumeRefused"]


@dataclass
class TrainConfig:
    """Hyperparameters of a run. The defaults are the DMF paper's (Section 4); each model's own
    defaults live in the model registry (:func:`dmfx.models.train_config`)."""

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-4
    num_negatives: int = 7
    resample: str = "epoch"  # "epoch" or "once"
    # "nce" (t = rating / max rating), "ce" (t = 1), "bpr" (pairwise: observed vs sampled item),
    # "hybrid" (EINMF: two targets per pair, implicit 1 and explicit rating / max rating)
    loss: str = "nce"
    optimizer: str = "adam"  # "adam" or "sgd" (NeuMF fine-tuned from pre-trained parts)
    # epochs without a better validation NDCG@topk (under `protocol`; the training loss where the
    # split has no validation rows) before stopping; 0: never
    patience: int = 5
    topk: int = 10
    # validation protocol of early stopping: "sampled" (the split's negatives) or "full" (all
    # items, the training items masked); see dmfx.evaluate
    protocol: str = "sampled"
    seed: int = 0
    # "epoch": the epoch's pairs built in full and shuffled together; "batch": built batch by
    # batch (memory scales with the batch; see the module docstring)
    pairs: str = "epoch"
    # stop after this many optimizer steps in all (0: no limit), the epoch in progress included:
    # for bounded runs on large data. The epoch it cuts is evaluated (its history entry has
    # "steps" < "batches"); the checkpoint keeps it unfinished, and a resume with a larger limit
    # finishes it.
    max_steps: int = 0
    # also write the checkpoint every this many steps of an epoch (0: at epoch ends only): a run
    # whose epochs take hours loses at most that many steps to a kill
    checkpoint_every: int = 0
    track_test: bool = False  # also record test metrics per epoch (for curves; never for selection)
    progress: bool = True

    def __post_init__(self):
        choices = {"resample": ("epoch", "once"), "loss": ("nce", "ce", "bpr", "hybrid"),
                   "optimizer": ("adam", "sgd"), "protocol": PROTOCOLS, "pairs": ("epoch", "batch")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_negatives", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.loss == "bpr" and self.num_negatives < 1:  # each pair needs its sampled item
            raise ValueError(f"num_negatives must be >= 1 under the bpr loss, got "
                             f"{self.num_negatives}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 (0: no limit), got {self.max_steps}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: at epoch ends only), got "
                             f"{self.checkpoint_every}")
        if self.pairs == "batch" and self.resample == "once":
            raise ValueError("resample 'once' keeps every pair's negatives for the whole run, "
                             "which pairs 'batch' exists to avoid: use pairs 'epoch'")


@dataclass
class TrainState:
    """Everything a checkpoint must hold to continue a run where it stopped."""

    epoch: int = 0  # epochs completed
    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = -math.inf  # the first finite epoch is the best so far, whatever its metric
    best_state: Optional[dict] = None  # the best epoch's weights; None once fit returns them
    bad_epochs: int = 0
    steps: int = 0  # optimizer steps taken (gradient-trained models), the unfinished epoch's included
    # the next epoch's progress when a checkpoint was taken inside it (see GradientEpochs.run)
    partial: Optional[dict] = None

    def as_dict(self) -> dict:
        """The fields as a dict for a checkpoint, tensors shared, not copied: ``asdict`` would
        copy ``best_state`` (the tables, 0.8 GB at Amazon scale) at every save."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
    """Adam with ``config.lr`` (or plain SGD with ``optimizer="sgd"``): the fused implementation
    (one pass per tensor, no temporaries) where every parameter is on a device torch has it for
    (CPU and CUDA). Parameters with row-sparse gradients (``model.sparse_grad_parameters()``) get
    :class:`dmfx.optim.RowSparseAdam`, which updates only the rows present in each gradient."""
    sparse_ids = {id(p) for p in model.sparse_grad_parameters()}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
                for p in dense)
    if config.optimizer == "sgd":
        if sparse_ids:
            raise ValueError("optimizer 'sgd' does not take row-sparse gradients (sparse_grad)")
        return torch.optim.SGD(dense, lr=config.lr)
    if not sparse_ids:
        return torch.optim.Adam(dense, lr=config.lr, fused=fused)
    sparse = RowSparseAdam(model.sparse_grad_parameters(), lr=config.lr)
    if not dense:  # one-layer towers: every parameter is a row-sparse first layer
        return sparse
    return SplitAdam(torch.optim.Adam(dense, lr=config.lr, fused=fused), sparse)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: tensors allocated on a CUDA device, else the process's resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from (run seed, epoch, purpose): independent streams, stable across runs."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] & (2**63 - 1))


class _Pairs:
    """The training interactions and their targets on the training device, for both ways of
    building an epoch's pairs.

    Pointwise losses (nce, ce, hybrid): every observed pair (target rating / max rating, or 1, or
    both as ``[1, rating / max rating]`` for hybrid) and ``num_negatives`` sampled pairs per
    observed one (target 0). Pairwise (bpr): every observed pair ``num_negatives`` times, each
    with one sampled item.
    """

    def __init__(self, split: Split, config: TrainConfig, device: torch.device,
                 dtype: torch.dtype = torch.float32):
        train = split.train
        if train.nnz == 0:  # else one empty batch, a NaN loss and a "diverged" error
            raise ValueError("the training part has no interactions: nothing to train on")
        self.config, self.device = config, device
        self.num_items = train.num_items
        seen = train.csr("binary", device=device)  # the sampler reads the pattern, not values
        self.indptr, self.indices = seen.indptr, seen.indices
        self.users = torch.from_numpy(train.users).to(device)
        if config.num_negatives:
            # Checked once, each user once (a user who rated every item is named here); the
            # rounds then sample unchecked: a checked round reads a user's row for each of its
            # pairs, O(sum of squared degrees), and syncs on CUDA.
            ops.sample_negatives(self.indptr, self.indices, torch.unique(self.users),
                                 self.num_items, 1, seed=0)
        self.items = torch.from_numpy(train.items).to(device)
        # In the model's dtype: a float64 model's losses take float64 targets.
        ratings = torch.from_numpy(train.ratings).to(device, dtype)
        scaled = config.loss in ("nce", "hybrid")
        if scaled and (train.ratings.min() < 0 or train.max_rating <= 0):
            low, high = train.ratings.min(), train.max_rating
            raise ValueError(f"the {config.loss} loss's target rating / max rating needs ratings "
                             f">= 0 with a positive maximum, got ratings in [{low}, {high}]")
        if config.loss == "nce":
            self.targets = ratings / float(train.max_rating)
        elif config.loss == "hybrid":
            self.targets = torch.stack([torch.ones_like(ratings), ratings / float(train.max_rating)], 1)
        else:
            self.targets = torch.ones_like(ratings)

    def sample(self, users: torch.Tensor, seed: int) -> torch.Tensor:
        """``num_negatives`` unobserved items of each of ``users``: [len(users), num_negatives]."""
        return ops.sample_negatives(self.indptr, self.indices, users, self.num_items,
                                    self.config.num_negatives, seed=seed, validate=False)

    def combine(self, users, items, targets, negatives):
        """(users, items, targets) of observed pairs and their sampled items; for bpr,
        ``targets`` holds the sampled (negative) item of each (user, observed item) pair."""
        k = self.config.num_negatives
        if self.config.loss == "bpr":
            return users.repeat_interleave(k), items.repeat_interleave(k), negatives.flatten()
        zeros = targets.new_zeros((negatives.numel(), *targets.shape[1:]))
        return (torch.cat([users, users.repeat_interleave(k)]),
                torch.cat([items, negatives.flatten()]), torch.cat([targets, zeros]))


class EpochPairs(_Pairs):
    """``pairs="epoch"``: all pairs of an epoch built at once and shuffled together."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fixed_negatives = None

    def negatives(self, epoch: int) -> torch.Tensor:
        if self.config.resample == "once" and self.fixed_negatives is not None:
            return self.fixed_negatives
        round_ = epoch if self.config.resample == "epoch" else 0
        out = self.sample(self.users, derive_seed(self.config.seed, round_, 1))
        if self.config.resample == "once":
            self.fixed_negatives = out
        return out

    def epoch(self, epoch: int):
        """(users, items, targets, permutation) of all pairs of ``epoch``."""
        users, items, targets = self.combine(self.users, self.items, self.targets,
                                             self.negatives(epoch))
        g = torch.Generator().manual_seed(derive_seed(self.config.seed, epoch, 2))
        order = torch.randperm(users.numel(), generator=g).to(self.device)
        return users, items, targets, order

    def batches(self, epoch: int, batch_size: int, start: int = 0):
        """(number of batches, the batches from the ``start``-th on as (users, items, targets))."""
        users, items, targets, order = self.epoch(epoch)
        # Shuffled once, so each batch is a slice (a view), not three gathers per step.
        users, items, targets = users[order], items[order], targets[order]
        batches = list(zip(users.split(batch_size), items.split(batch_size),
                           targets.split(batch_size)))
        return len(batches), iter(batches[start:])


class BatchPairs(_Pairs):
    """``pairs="batch"``: the observed pairs shuffled, each batch's negatives drawn when it is
    taken. A batch holds ``batch_size // (1 + num_negatives)`` observed pairs (``// num_negatives``
    for bpr) and their sampled ones, seeded by (seed, epoch, batch)."""

    def batches(self, epoch: int, batch_size: int, start: int = 0):
        config, nnz = self.config, self.users.numel()
        per_pair = config.num_negatives if config.loss == "bpr" else 1 + config.num_negatives
        per = max(1, batch_size // per_pair)
        g = torch.Generator().manual_seed(derive_seed(config.seed, epoch, 2))
        order = torch.randperm(nnz, generator=g,
                               dtype=torch.int32 if nnz < 2**31 else torch.int64).to(self.device)
        count = -(-nnz // per)

        def generate():
            for b in range(start, count):
                take = order[b * per:(b + 1) * per]
                users = self.users[take]
                negatives = self.sample(users, derive_seed(config.seed, epoch, 3, b))
                yield self.combine(users, self.items[take], self.targets[take], negatives)

        return count, generate()


class GradientEpochs:
    """One epoch of Algorithm 1: shuffled mini-batches of :class:`EpochPairs`, one optimizer step
    each, on ``model.loss`` (``model.pairwise_loss`` for bpr)."""

    def __init__(self, model: Recommender, split: Split, config: TrainConfig):
        if config.loss not in model.losses:
            raise ValueError(f"{type(model).__name__} trains with loss "
                             f"{' or '.join(model.losses)}, not {config.loss!r}")
        self.model, self.config = model, config
        self.optimizer = make_optimizer(model, config)
        pairs = EpochPairs if config.pairs == "epoch" else BatchPairs
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.pairs = pairs(split, config, model.device, dtype)
        self.converged = False

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def run(self, epoch: int, max_steps: int = 0, progress: Optional[dict] = None,
            save_every: int = 0, save: Optional[Callable[[dict], None]] = None) -> dict:
        """One epoch, or its next ``max_steps`` steps (0: all of them).

        ``progress`` continues an epoch from a checkpoint taken inside it (``"progress"`` of an
        earlier result, or what ``save`` was given); ``save(progress)`` is called after every
        ``save_every``-th step of the epoch but the last this call takes (the epoch's end, or
        where ``max_steps`` cuts it: the caller saves there) and while the loss is finite. The
        result has the epoch's mean loss and
        pairs per second, its ``steps`` done of its ``batches``, the steps ``taken`` by this
        call, and ``progress`` when the epoch is unfinished.

        Dropout (EINMF) draws from torch's global generator: it is seeded from (seed, epoch)
        for the epoch (and its state kept in ``progress``), so a resumed run draws the same
        masks, and given back as it was afterwards."""
        device = self.model.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.dropout_seed(epoch))
            if progress is not None:
                self.set_generator_state(progress["generator"])
            return self._run(epoch, max_steps, progress or {}, save_every, save)

    def dropout_seed(self, epoch: int) -> int:
        return derive_seed(self.config.seed, epoch, 4)

    def generator_state(self) -> dict:
        """The state of torch's generator that dropout draws from, for ``progress``."""
        return _generator_state(self.model.device)

    def set_generator_state(self, state: dict) -> None:
        _set_generator_state(state, self.model.device)

    def _run(self, epoch: int, max_steps: int, progress: dict, save_every: int, save) -> dict:
        model, config = self.model, self.config
        model.train()
        start = time.perf_counter()
        begun = progress.get("steps", 0)
        count, batches = self.pairs.batches(epoch, config.batch_size, start=begun)
        end = min(count, begun + max_steps) if max_steps else count
        loss_fn = model.pairwise_loss if config.loss == "bpr" else model.loss
        total = torch.tensor(progress.get("loss_sum", 0.0), device=model.device,
                             dtype=torch.float64)
        done, steps, before = progress.get("pairs", 0), begun, progress.get("seconds", 0.0)

        def seconds() -> float:
            return before + time.perf_counter() - start

        def snapshot() -> dict:
            return {"epoch": epoch, "steps": steps, "batches": count, "loss_sum": total.item(),
                    "pairs": done, "seconds": seconds(),
                    "generator": self.generator_state()}

        bar = tqdm(total=count, initial=begun, desc=f"epoch {epoch}", unit="batch", leave=False,
                   disable=not config.progress, mininterval=0.5)
        for batch_users, batch_items, batch_targets in batches:
            total += self.step(loss_fn, batch_users, batch_items, batch_targets)
            done += batch_users.numel()
            steps += 1
            bar.update()
            if steps % 100 == 0 and config.progress:  # reading the loss syncs: only now and then
                bar.set_postfix(loss=f"{total.item() / max(1, done):.4f}",
                                pairs_s=f"{done / seconds():,.0f}")
            if steps == end:
                break
            if save is not None and save_every and steps % save_every == 0:
                state = snapshot()
                if math.isfinite(state["loss_sum"]):  # a diverging epoch is redone on resume
                    save(state)
        bar.close()
        final = snapshot()
        stats = _epoch_stats(final, taken=steps - begun)
        if steps < count:
            stats["progress"] = final
        return stats

    def step(self, loss_fn, users: torch.Tensor, items: torch.Tensor,
             targets: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a batch; returns the batch's summed loss (detached)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(users, items, targets)
        loss.backward()
        self.optimizer.step()
        return loss.detach() * users.numel()


def _epoch_stats(progress: dict, taken: int) -> dict:
    """An epoch's result from its progress (see GradientEpochs.run), ``taken`` steps of it
    by this call."""
    return {"loss": progress["loss_sum"] / max(1, progress["pairs"]),
            "pairs_per_s": progress["pairs"] / max(progress["seconds"], 1e-9),
            "steps": progress["steps"], "batches": progress["batches"], "taken": taken}


def _generator_state(device: torch.device) -> dict:
    """torch's global generator (dropout draws from it) for the device that trains."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_generator_state(state: dict, device: torch.device) -> None:
    # A run that moves between devices on resume keeps only the CPU stream.
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# Settings a resumed run may change: they decide how long it runs and what it records, not what
# a step computes. Any other change would continue the run under settings it never had.
RESUMABLE_CHANGES = ("epochs", "patience", "max_steps", "checkpoint_every", "track_test",
                     "progress")


class ResumeRefused(CheckpointError):
    """A run cannot be continued under other settings than those it was started with.
    ``changes`` holds ``(setting, before, now)`` of each change, the setting named as a
    :class:`TrainConfig` field or by its place in the checkpoint's records
    (``data.spec.sep``, ``model.config.user_layers``)."""

    def __init__(self, path, changes: list):
        self.path, self.changes = path, changes
        shown = "; ".join(f"{name} {before!r} -> {now!r}" for name, before, now in changes)
        super().__init__(f"{path} was trained with other settings ({shown}); a resumed run may "
                         f"change only {', '.join(RESUMABLE_CHANGES)}")


def _ranks_text(record) -> str:
    return "one process" if record is None else \
        f"{record['world_size']} rank(s) under --distributed {record['mode']}"


def _check_resumable(path, saved: dict, config: TrainConfig, extra: dict) -> None:
    """Refuses to continue a run under other settings than those it was started with."""
    # The shards of a checkpoint and its batch slices follow the ranks: checked first, by name.
    before, now = saved.get("distributed"), extra.get("distributed")
    if before != now:
        raise CheckpointError(
            f"{path} was written by {_ranks_text(before)}, this run has {_ranks_text(now)}: "
            "resume with the same --distributed mode and number of ranks (torchrun "
            "--nproc_per_node)")
    before = saved.get("train_config", {})
    # A setting added after the checkpoint was written had its default then.
    before = {**asdict(TrainConfig()), **before}
    changed = [(name, before.get(name), value) for name, value in asdict(config).items()
               if name not in RESUMABLE_CHANGES and before.get(name) != value]
    for key, value in extra.items():
        if key == "model" and key not in saved:  # written before fit recorded it
            continue
        if key != "distributed" and saved.get(key) != value:
            changed += _differences(key, saved.get(key), value)
    if changed:
        raise ResumeRefused(path, changed)


def _model_record(model) -> dict:
    """What a checkpoint says of its model (kind and settings), so that NeuMF-p can start from
    any GMF or MLP checkpoint, not only the CLI's; nothing for a model not in the registry."""
    from .models.registry import name_of

    try:
        return {"model": {"kind": name_of(model), "config": model.config()}}
    except (ValueError, NotImplementedError):
        return {}


def _differences(name: str, before, after) -> list[tuple]:
    if isinstance(before, dict) and isinstance(after, dict):
        return [d for key in sorted(set(before) | set(after), key=str)
                for d in _differences(f"{name}.{key}", before.get(key), after.get(key))]
    return [] if before == after else [(name, before, after)]


class LocalRun:
    """Where :func:`fit` runs its epochs, evaluates and keeps its checkpoint: this process
    alone. :class:`dmfx.distributed.World` runs the same loop on every rank of a process group."""

    def record(self) -> dict:
        """What a checkpoint notes about the processes that wrote it (nothing for one)."""
        return {}

    def epoch_runner(self, model: Recommender, split: Split, config: TrainConfig):
        return model.epoch_runner(split, config)

    def evaluate(self, model: Recommender, split: Split, which: str, **kwargs) -> dict:
        return evaluate(model, split, which, **kwargs)

    def save(self, path, model: Recommender, runner, state: TrainState, payload: dict) -> None:
        save_checkpoint(path, {"model_state": model.state_dict(), "runner": runner.state_dict(),
                               "train_state": state.as_dict(), **payload})

    def restore(self, path, saved: dict, model: Recommender, runner) -> TrainState:
        model.load_state_dict(saved["model_state"])
        runner.load_state_dict(saved["runner"])
        return TrainState(**saved["train_state"])


def fit(model: Recommender, split: Split, config: TrainConfig, *,
        checkpoint: str | os.PathLike | None = None, resume: bool = False,
        extra: dict | None = None,
        on_epoch_end: Callable[[int, dict], None] | None = None,
        world: LocalRun | None = None) -> TrainState:
    """Trains ``model`` on ``split.train`` and keeps the weights of the best validation epoch
    (best by validation NDCG@``config.topk``; by training loss where the split has no
    validation rows).

    What an epoch does is ``model.epoch_runner(split, config)``: Adam steps on sampled pairs for
    gradient models (:class:`GradientEpochs`), an ALS sweep for eALS, a single pass for models
    computed in closed form (which then stop after one epoch).

    Args:
        checkpoint: file written (atomically) after every epoch, every
            ``config.checkpoint_every`` steps inside one, and where ``config.max_steps`` cuts
            the run; with ``resume=True`` and an existing file, training continues from it (in
            the middle of an epoch where it was taken there).
        extra: stored in the checkpoint as is (the CLI keeps its data settings there), beside
            the model's kind and settings (``"model"``) for a registered model.
        on_epoch_end: called with (epoch, history entry) after each epoch.
        world: the processes that train together (:class:`dmfx.distributed.World`); default
            this one alone.

    Returns:
        The final :class:`TrainState`; the model holds the best epoch's weights (so the
        state's ``best_state`` is None).
    """
    device = model.device
    world = world if world is not None else LocalRun()
    extra = {**_model_record(model), **(extra or {}), **world.record()}
    state = TrainState()
    runner = world.epoch_runner(model, split, config)
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        saved = load_checkpoint(checkpoint, map_location=device)
        _check_resumable(checkpoint, saved, config, extra)
        try:
            state = world.restore(checkpoint, saved, model, runner)
        except CheckpointError:  # says what is wrong with the files already
            raise
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            first = (str(error).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"{checkpoint} does not fit this model ({first})") from None
    for name in ("max_steps", "checkpoint_every"):
        if getattr(config, name) and not isinstance(runner, GradientEpochs):
            raise ValueError(f"{name} counts gradient steps; {type(model).__name__} is not "
                             "trained by them")
    if state.partial is not None and state.partial["epoch"] != state.epoch + 1:
        raise CheckpointError(f"{checkpoint} holds progress of epoch {state.partial['epoch']} "
                              f"after {state.epoch} finished epochs")
    has_valid = len(split.valid_users) > 0
    payload = {"train_config": asdict(config), **extra}

    def out_of_steps() -> bool:
        return 0 < config.max_steps <= state.steps

    # An unfinished epoch is taken up again even without steps left: it is then evaluated as
    # the run that was cut there evaluated it.
    stopped = state.bad_epochs >= config.patience > 0 or (state.epoch > 0 and runner.converged) \
        or (out_of_steps() and state.partial is None)
    for epoch in range(state.epoch + 1, 0 if stopped else config.epochs + 1):
        start = time.perf_counter()
        progress, state.partial = state.partial, None
        steps_before = state.steps

        def save_progress(partial: dict) -> None:
            taken = partial["steps"] - (progress["steps"] if progress else 0)
            world.save(checkpoint, model, runner,
                       replace(state, steps=steps_before + taken, partial=partial), payload)

        if not isinstance(runner, GradientEpochs):
            stats = runner.run(epoch)
        elif out_of_steps():  # an epoch cut where this resume has no step left to take
            stats = {**_epoch_stats(progress, taken=0), "progress": progress}
        else:
            stats = runner.run(epoch, max_steps=config.max_steps - state.steps
                               if config.max_steps else 0, progress=progress,
                               save_every=config.checkpoint_every,
                               save=save_progress if checkpoint is not None else None)
        unfinished = stats.pop("progress", None)
        if not math.isfinite(stats.get("loss", 0.0)):
            # Diverged: the epoch is neither evaluated nor checkpointed (a resume redoes it from
            # its last checkpoint with a finite loss) and the model goes back to the best epoch's
            # weights, as after early stopping.
            message = f"epoch {epoch}: the training loss is {stats['loss']}: the model diverged"
            if isinstance(runner, GradientEpochs):
                message += f" (try a lower learning rate than lr={config.lr:g})"
            if state.best_state is None:
                raise FloatingPointError(f"{message}; no earlier epoch to keep")
            warnings.warn(f"{message}; training stops and keeps epoch {state.best_epoch}",
                          RuntimeWarning, stacklevel=2)
            # Its steps taken before a resume do not count either, as in a run never resumed.
            state.steps = steps_before - (progress["steps"] if progress else 0)
            break
        state.steps += stats.pop("taken", 0)
        # What the checkpoint of a cut epoch holds: the run before this epoch's evaluation, so
        # that a resume goes on as if it had never been cut.
        resumable = replace(state, history=list(state.history), partial=unfinished) \
            if unfinished else state
        seconds = time.perf_counter() - start + (progress["seconds"] if progress else 0.0)
        entry = {"epoch": epoch, **stats, "seconds": seconds,
                 "peak_memory_mb": peak_memory_mb(device)}
        watched = (config.protocol,)
        if has_valid:
            entry["valid"] = world.evaluate(model, split, "valid", ks=(config.topk,),
                                            protocols=watched)
            metric = entry["valid"][f"{PREFIX[config.protocol]}ndcg@{config.topk}"]
        else:
            metric = -stats["loss"]
        if config.track_test:
            entry["test"] = world.evaluate(model, split, "test", ks=(config.topk,),
                                           protocols=watched)
        state.history.append(entry)
        state.epoch = epoch
        if unfinished:
            # Whether this evaluation of the cut epoch made it the run's result: the checkpoint
            # then gives its weights (model_state) to evaluate and recommend, as model.pt does.
            unfinished["evaluated_best"] = metric > state.best_metric
        if metric > state.best_metric:
            state.best_metric, state.best_epoch, state.bad_epochs = metric, epoch, 0
            state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            state.bad_epochs += 1
        stop = runner.converged or config.patience > 0 and state.bad_epochs >= config.patience \
            or out_of_steps()
        if checkpoint is not None:
            world.save(checkpoint, model, runner, resumable, payload)
        if on_epoch_end is not None:
            on_epoch_end(epoch, entry)
        if stop:
            break
    state.partial = None
    if state.best_state is not None:
        # The model holds them now: a second copy of the tables would stay alive for as long
        # as the caller keeps the state (through evaluation and saving, at Amazon scale 0.8 GB).
        model.load_state_dict(state.best_state)
        state.best_state = None
    return state
