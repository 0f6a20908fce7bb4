"""Training on several processes with torch.distributed: ``torchrun --nproc_per_node=N -m dmfx train``.

Every rank builds the epoch's training pairs exactly as one process does (the sampler on the
training device, seeded by run and epoch) and takes its slice of each global batch, so N ranks
take the optimizer steps of one process on the same global batches; only the order in which
partial sums are added differs, and dropout's masks (each rank draws its slice's from its own
seed). Seeds per rank would make a run depend on the number of ranks;
shared ones cost each rank the whole epoch's pairs, unless they are built batch by batch
(``--pairs batch``: every rank draws the same negatives for the same global batch). Each rank's
loss is weighted by its share of the batch, so the summed gradients are those of the batch's
mean loss even where the slices are unequal (the last batch). Two modes:

``ddp`` (data parallel)
    Every rank holds the whole model. After each backward the gradients are summed over the
    ranks (one all-reduce of the dense ones; an all-gather of the row-sparse ones of
    ``sparse_grad``), then every rank takes the same optimizer step. For any gradient-trained
    model whose tables fit on every device.
``sharded`` (DMF)
    Rank r stores and updates only rows [lo_r, hi_r) of the two first-layer tables, W_U1
    (items x h1, the user tower's) and W_V1 (users x h1), their Adam state, and the entries of
    Y (Y transposed) in those columns. A batch's first layer is the row-wise sharded pooled
    embedding of TorchRec/FBGEMM: each rank sums, for the unique ids of every rank's slice, the
    entries it owns (:func:`dmfx.ops.sparse_rows_matmul` on its column-filtered CSR), and a
    reduce-scatter hands each rank the complete sums of its own slice. The backward all-gathers
    the slices' output gradients and each rank computes its shard's gradient from its entries.
    The small dense layers are data parallel. Table memory per rank falls as 1/N.

Rank 0 alone reads and splits the data; the others receive the split from it
(:meth:`World.share_split`), so only rank 0 needs the data's file.

Evaluation runs :func:`dmfx.evaluate.evaluate` on rank 0 (sharded: on the tower outputs of
every user and item, summed to rank 0) while the others wait for its result, so the metrics are
those of one process. Checkpoints: ddp writes the one-process file from rank 0; sharded writes
one file per rank and epoch, then rank 0 commits the epoch in ``checkpoint.pt``, so a kill at
any moment leaves a complete, consistent set. Under gloo a collective that fails (a rank died,
or hung past the timeout) raises :class:`DistributedError` on every rank still running; NCCL's
collectives are asynchronous, and there torch's watchdog (or torchrun) ends the group instead.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .checkpoint import CheckpointError, RunFolderBusy, RunLock, load_checkpoint, save_checkpoint
from .data import CSR, Interactions, Split, as_csr
from .evaluate import evaluate
from .models import DMF, Recommender, VectorScorer, build_model
from .models.dmf import INIT_STD, MLP
from .models.registry import spec_of
from .train import GradientEpochs, LocalRun, TrainConfig, TrainState, derive_seed, peak_memory_mb

__all__ = ["MODES", "DEFAULT_TIMEOUT", "DistributedError", "World", "start", "init_process_group",
           "ShardedDMF", "DistributedEpochs"]

MODES = ("ddp", "sharded")
# seconds; rank 0's read and split of the data and its evaluation must fit, as the others wait
DEFAULT_TIMEOUT = 1800.0
# How long the ranks that finished wait for rank 0's final evaluation and files, which can take
# far longer than an epoch's evaluation (every item ranked for every test user); a rank 0 that
# dies is noticed by torchrun, which stops the others.
EXIT_TIMEOUT = timedelta(days=7)
# Dense gradients up to this many elements go through one flat all-reduce; larger ones alone,
# in place, rather than copied.
BUCKET = 1 << 24
INIT_BLOCK = 4096  # rows of a first-layer table drawn from one seed (see ShardedDMF)
# derive_seed(seed, _INIT, table, block) seeds initial weights; the trainer's seeds put the
# epoch second and their purpose (1 to 4) third, and no table is numbered 3.
_INIT = 3

# Older torch (>= 2.4) names the single-tensor collectives *_tensor.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


# What World.share_split sends of a split: the training interactions and the evaluated pairs.
_TRAIN_ARRAYS = ("user_ids", "item_ids", "users", "items", "ratings", "timestamps")
_EVALUATED = ("valid_users", "valid_items", "test_users", "test_items")


class DistributedError(RuntimeError):
    """A collective failed: another rank stopped, hung past the timeout or cannot be reached.
    The message is one line and says how to go on."""


def _round_trips(error: Exception) -> bool:
    """Whether ``error`` survives pickling, as the other ranks receive it (an exception whose
    ``__init__`` takes other arguments than its message does not)."""
    try:
        pickle.loads(pickle.dumps(error))
        return True
    except Exception:
        return False


def init_process_group(device: torch.device, timeout: float) -> None:
    """The process group of this rank: from torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT), or this process alone when torchrun did not start it. NCCL for
    CUDA, gloo for CPU; a collective waits at most ``timeout`` seconds for the other ranks."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    limit = timedelta(seconds=timeout)
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend, timeout=limit,
                                device_id=device if device.type == "cuda" else None)
        return
    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise ValueError("--distributed: WORLD_SIZE is set but MASTER_ADDR is not; start the "
                         "ranks with torchrun")
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=limit)


def start(mode: Optional[str], device: torch.device, timeout: float, model: str) -> Optional["World"]:
    """The :class:`World` of a ``dmfx train`` rank (``--distributed``, ``--dist-timeout``), or
    None for a run in one process: no ``--distributed`` and no torchrun with more than one rank.
    Settings that cannot work are refused before any process group is formed."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if mode is None and size == 1:
        return None
    mode = mode or "ddp"
    if mode not in MODES:
        raise ValueError(f"--distributed: expected ddp or sharded, got {mode!r}")
    if not timeout > 0:
        raise ValueError(f"--dist-timeout must be > 0 seconds, got {timeout}")
    spec = spec_of(model)
    if mode == "sharded" and spec.cls is not DMF:
        raise ValueError(f"--distributed sharded splits DMF's first-layer tables over the ranks; "
                         f"model {spec.name} has none (use --distributed ddp)")
    if spec.trainer != "gradient":
        raise ValueError(f"--distributed: model {spec.name} is trained "
                         f"{'in closed form' if spec.trainer == 'closed-form' else 'by ' + spec.trainer}"
                         ", in one process; only gradient-trained models run on several ranks")
    if device.type == "cuda":
        if size > 1 and device.index is not None:
            raise ValueError(f"--device {device}: under torchrun each rank takes the GPU of its "
                             "LOCAL_RANK; give --device cuda")
        if device.index is None:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise ValueError(f"--device cuda: the rank with LOCAL_RANK {local} has no GPU "
                                 f"(this machine has {torch.cuda.device_count()}); start at most "
                                 "that many ranks per machine (torchrun --nproc_per_node)")
            device = torch.device("cuda", local)
        elif device.index >= torch.cuda.device_count():  # one rank keeps the GPU it was given
            raise ValueError(f"--device {device}: this machine has "
                             f"{torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(device)
    init_process_group(device, timeout)
    return World(mode, device, timeout)


class World(LocalRun):
    """This rank's view of the process group, and how :func:`dmfx.train.fit` runs on it.

    Every rank calls the same methods in the same order: each one holds collectives.
    ``with world:`` leaves the process group at the end.
    """

    def __init__(self, mode: str, device: torch.device, timeout: float = DEFAULT_TIMEOUT):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.device, self.timeout = mode, torch.device(device), timeout
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.main = self.rank == 0
        # The exit's own group (gloo: a CPU barrier whatever the backend), with its own time limit.
        self._exit_group = dist.new_group(backend="gloo", timeout=EXIT_TIMEOUT)

    def __enter__(self) -> "World":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if dist.is_initialized():
            if exc_type is None:
                # Leave together: a rank that tears its gloo group down while rank 0 still
                # writes the run's files was seen to abort rank 0 at exit (SIGABRT).
                with self.guard("waiting for every rank to finish"):
                    dist.barrier(group=self._exit_group)
            dist.destroy_process_group()

    # -- collectives -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def guard(self, what: str):
        """Turns the failure of the collective(s) inside into a :class:`DistributedError`."""
        try:
            yield
        except DistributedError:
            raise
        except RuntimeError as error:  # gloo and NCCL report a lost or late peer as RuntimeError
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise DistributedError(
                f"rank {self.rank} of {self.size}: {what} failed: another rank stopped, hung for "
                f"longer than --dist-timeout ({self.timeout:g} s) or cannot be reached "
                f"({reason}); every rank stops; continue from the last checkpoint with "
                "--resume") from None

    def bounds(self, n: int) -> list[int]:
        """Where each rank's share of ``n`` things starts (and the last ends): contiguous,
        sizes differing by at most one."""
        q, r = divmod(n, self.size)
        return [k * q + min(k, r) for k in range(self.size + 1)]

    def mine(self, n: int) -> tuple[int, int]:
        b = self.bounds(n)
        return b[self.rank], b[self.rank + 1]

    def barrier(self, what: str) -> None:
        with self.guard(what):
            dist.barrier()

    def broadcast(self, value, what: str):
        """Rank 0's ``value`` on every rank (any picklable object)."""
        box = [value]
        with self.guard(what):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, what: str, compute):
        """``compute()`` run on rank 0, its result (or its exception) on every rank."""
        outcome = error = None
        if self.main:
            try:
                outcome = (True, compute())
            except Exception as caught:  # handed to the waiting ranks, then raised everywhere
                error = caught
                outcome = (False, caught if _round_trips(caught) else DistributedError(
                    f"rank 0: {type(caught).__name__}: {caught}"))
        ok, value = self.broadcast(outcome, what)
        if not ok:
            raise error if error is not None else value
        return value

    def gather_floats(self, value: float, what: str) -> list[float]:
        out = torch.empty(self.size, dtype=torch.float64, device=self.device)
        with self.guard(what):
            _all_gather(out, torch.tensor([value], dtype=torch.float64, device=self.device))
        return out.tolist()

    def reduce_scatter(self, partial: Tensor) -> Tensor:
        """The sum over the ranks of ``partial`` (``[size * n, ...]``), rank r keeping rows
        [r * n, (r + 1) * n); differentiable (the backward all-gathers the gradients)."""
        return _ReduceScatter.apply(partial, self)

    def reduce_to_main(self, tensor: Tensor, what: str) -> Tensor:
        with self.guard(what):
            dist.reduce(tensor, dst=0)
        return tensor

    def gather_rows(self, shard: Tensor, total: int) -> Optional[Tensor]:
        """The table whose rows ``bounds(total)`` the ranks hold as ``shard``, on rank 0."""
        b = self.bounds(total)
        most = max(hi - lo for lo, hi in zip(b, b[1:]))
        padded = shard.new_zeros((most, *shard.shape[1:]))
        padded[: shard.shape[0]] = shard
        parts = [torch.empty_like(padded) for _ in range(self.size)] if self.main else None
        with self.guard("gathering the first-layer tables on rank 0"):
            dist.gather(padded, parts, dst=0)
        if not self.main:
            return None
        return torch.cat([part[: hi - lo] for part, lo, hi in zip(parts, b, b[1:])])

    def sum_gradients(self, dense: Sequence[nn.Parameter], sparse: Sequence[nn.Parameter],
                      loss_sum: Tensor) -> Tensor:
        """Sums the gradients of ``dense`` and ``sparse`` (row-sparse) parameters over the ranks,
        in place, and returns ``loss_sum`` summed over the ranks (it rides in the same
        all-reduce). A parameter that got no gradient on any rank keeps none, as in one process
        (an optimizer step then skips it)."""
        present = [p.grad is not None for p in dense]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in dense]
        small = [g for g in grads if g.numel() <= BUCKET]
        head = torch.tensor([0.0, *present], dtype=loss_sum.dtype, device=loss_sum.device)
        head[0] = loss_sum
        flat = torch.cat([head, *(g.reshape(-1) for g in small)])
        with self.guard("the all-reduce of gradients"):
            dist.all_reduce(flat)
            for g in grads:
                if g.numel() > BUCKET:
                    dist.all_reduce(g)
        offset = head.numel()
        for g in small:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
        for p, g, count in zip(dense, grads, flat[1: head.numel()].tolist()):
            p.grad = g if count > 0 else None
        if sparse:
            self._sum_row_sparse(sparse)
        return flat[0]

    def _sum_row_sparse(self, params: Sequence[nn.Parameter]) -> None:
        """Row-sparse gradients summed over the ranks: every rank's rows gathered (NCCL has no
        sparse all-reduce), rows that several ranks hold added up. A gradient with no rows on
        any rank stays an empty one, not None, as in one process: the optimizer counts the step."""
        local, held = [], []
        for p in params:
            held.append(p.grad is not None)
            if p.grad is None:
                rows = torch.empty(0, dtype=torch.long, device=p.device)
                local.append((rows, p.new_zeros((0, *p.shape[1:]))))
            else:
                grad = p.grad.coalesce()
                local.append((grad.indices()[0], grad.values()))
        # rows + 1 where a rank holds a gradient, 0 where it holds None
        counts = torch.tensor([len(rows) + has for (rows, _), has in zip(local, held)],
                              device=self.device)
        everyone = counts.new_empty(self.size * len(params))
        with self.guard("the all-gather of row-sparse gradient sizes"):
            _all_gather(everyone, counts)
        everyone = everyone.view(self.size, len(params)).cpu()
        for k, (p, (rows, values)) in enumerate(zip(params, local)):
            if int(everyone[:, k].max()) == 0:
                p.grad = None
                continue
            sizes = (everyone[:, k] - 1).clamp(min=0)
            most = int(sizes.max())
            if most == 0:
                p.grad = torch.sparse_coo_tensor(rows.new_empty((1, 0)), values, p.shape,
                                                 check_invariants=False).coalesce()
                continue
            padded_rows = rows.new_zeros(most)
            padded_rows[: len(rows)] = rows
            padded_values = values.new_zeros((most, *values.shape[1:]))
            padded_values[: len(rows)] = values
            all_rows = rows.new_empty(self.size * most)
            all_values = values.new_empty((self.size * most, *values.shape[1:]))
            with self.guard("the all-gather of row-sparse gradients"):
                _all_gather(all_rows, padded_rows)
                _all_gather(all_values, padded_values)
            keep = (torch.arange(most).unsqueeze(0) < sizes.unsqueeze(1)).reshape(-1)
            keep = keep.to(all_rows.device)
            p.grad = torch.sparse_coo_tensor(all_rows[keep].unsqueeze(0), all_values[keep],
                                             p.shape, check_invariants=False).coalesce()

    def broadcast_arrays(self, arrays: Optional[dict], what: str) -> dict:
        """Rank 0's dict of numpy arrays on every rank (``arrays`` is ignored elsewhere):
        numbers through the group's own broadcast, without a pickled copy of them; anything
        else (string ids) pickled."""
        layout = None
        if self.main:
            layout = {}
            for name, array in arrays.items():
                try:
                    torch.from_numpy(np.empty(0, dtype=array.dtype))
                    layout[name] = ("tensor", array.dtype.str, array.shape)
                except TypeError:  # no torch dtype: strings, objects
                    layout[name] = ("value", array)
        layout = self.broadcast(layout, what)
        if self.main:
            for name, entry in layout.items():
                if entry[0] == "tensor" and arrays[name].size:
                    tensor = torch.from_numpy(np.ascontiguousarray(arrays[name]))
                    with self.guard(what):  # NCCL broadcasts device tensors only
                        dist.broadcast(tensor.to(self.device), src=0)
            return arrays
        out = {}
        for name, entry in layout.items():
            if entry[0] == "value":
                out[name] = entry[1]
                continue
            out[name] = np.empty(entry[2], dtype=np.dtype(entry[1]))
            if out[name].size:
                tensor = torch.from_numpy(out[name]).to(self.device)
                with self.guard(what):
                    dist.broadcast(tensor, src=0)
                out[name] = tensor.cpu().numpy()
        return out

    def share_split(self, prepare):
        """``prepare()`` run on rank 0 alone, returning ``(split, info)``: it reads and splits
        the data. Every other rank then receives the split from rank 0, less the sampled
        evaluation items (rank 0 alone evaluates), and ``info`` (small, pickled). So only rank
        0 needs the data's file (or downloads it, or generates a synthetic set), and only it
        parses and splits; its error is raised on every rank."""
        made = {}

        def read_and_split():
            made["split"], info = prepare()
            return info, made["split"].holdout, made["split"].test_negatives.dtype.str

        info, holdout, negatives = self.on_main("reading and splitting the data on rank 0",
                                                read_and_split)
        split = made.get("split")
        what = "receiving the split from rank 0"
        train = self.broadcast_arrays(
            {name: getattr(split.train, name) for name in _TRAIN_ARRAYS
             if getattr(split.train, name) is not None} if self.main else None, what)
        held = self.broadcast_arrays(
            {name: getattr(split, name) for name in _EVALUATED} if self.main else None, what)
        if self.main:
            return split, info
        empty = {f"{part}_negatives": np.empty((len(held[f"{part}_users"]), 0), dtype=negatives)
                 for part in ("valid", "test")}
        return Split(train=Interactions(**train), **held, **empty, holdout=holdout), info

    # -- models --------------------------------------------------------------------------------

    def record(self) -> dict:
        return {"distributed": {"mode": self.mode, "world_size": self.size}}

    def build_model(self, name: str, train: Interactions, params: dict, seed: int) -> Recommender:
        """The model this rank trains: the whole model (ddp; seed torch first, as for one
        process) or its shard of a DMF (sharded)."""
        if self.mode == "ddp":
            return build_model(name, train, params, self.device)
        spec = spec_of(name)
        return ShardedDMF(train, self, seed, **{**spec.defaults(), **params}).to(self.device)

    def gather_model(self, model: Recommender, train: Interactions) -> Optional[Recommender]:
        """The trained model whole, on rank 0 (None on the others): ddp's replica, or a
        :class:`DMF` holding the sharded tables gathered from every rank."""
        if self.mode == "ddp":
            return model if self.main else None
        state = dict(model.state_dict())
        for key, tower in (("user_tower.first", model.user_tower),
                           ("item_tower.first", model.item_tower)):
            state[key] = self.gather_rows(state[key], tower.total)
        if not self.main:
            return None
        whole = build_model("dmf", train, model.config(), self.device, restore=True)
        whole = whole.to(state["user_tower.first"].dtype)  # before loading, which casts
        whole.load_state_dict(state)
        return whole

    # -- fit's hooks ---------------------------------------------------------------------------

    def epoch_runner(self, model: Recommender, split: Split, config: TrainConfig):
        return DistributedEpochs(model, split, config, self)

    def evaluate(self, model: Recommender, split: Split, which: str, **kwargs) -> dict:
        scorer = model.gathered_scorer() if self.mode == "sharded" else None
        if scorer is not None:
            kwargs["scorer"] = scorer
        return self.on_main(f"the {which} evaluation on rank 0",
                            lambda: evaluate(model, split, which, **kwargs))

    def shard_path(self, path, epoch: int, partial_steps: Optional[int] = None) -> Path:
        """This rank's shard of the checkpoint after ``epoch`` finished epochs (and
        ``partial_steps`` of the next): each point of a run has its own file, so a kill inside
        the write of a later one leaves the committed shards whole."""
        path = Path(path)
        step = "" if partial_steps is None else f".step{partial_steps}"
        return path.with_name(f"{path.stem}.rank{self.rank}-of-{self.size}.epoch{epoch}{step}"
                              f"{path.suffix}")

    def save(self, path, model: Recommender, runner, state: TrainState, payload: dict) -> None:
        if self.mode == "ddp":  # every rank holds the same model and optimizer state
            if self.main:
                super().save(path, model, runner, state, payload)
            return
        partial_steps = state.partial["steps"] if state.partial else None
        mine = self.shard_path(path, state.epoch, partial_steps)
        save_checkpoint(mine, {"model_state": model.state_dict(), "runner": runner.state_dict(),
                               "best_state": state.best_state, "epoch": state.epoch,
                               "partial_steps": partial_steps, "rank": self.rank,
                               "world_size": self.size})
        self.barrier("waiting for every rank's checkpoint shard")
        if self.main:  # the commit: the epoch whose shards a resume reads
            save_checkpoint(path, {"train_state": replace(state, best_state=None).as_dict(),
                                   "shards": {"epoch": state.epoch,
                                              "partial_steps": partial_steps}, **payload})
        self.barrier("waiting for rank 0 to commit the checkpoint")
        for old in mine.parent.glob(f"{Path(path).stem}.rank{self.rank}-of-{self.size}.epoch*"):
            if old != mine:
                old.unlink(missing_ok=True)

    def restore(self, path, saved: dict, model: Recommender, runner) -> TrainState:
        if self.mode == "ddp":
            return super().restore(path, saved, model, runner)
        epoch, partial_steps = saved["shards"]["epoch"], saved["shards"].get("partial_steps")
        where = f"epoch {epoch}" if partial_steps is None else \
            f"step {partial_steps} of epoch {epoch + 1}"
        mine = self.shard_path(path, epoch, partial_steps)
        if not mine.is_file():
            raise CheckpointError(f"{path} continues from {where}, but this rank's shard "
                                  f"{mine.name} is missing")
        shard = load_checkpoint(mine, map_location=self.device)
        if (shard.get("epoch"), shard.get("partial_steps"), shard.get("rank"),
                shard.get("world_size")) != (epoch, partial_steps, self.rank, self.size):
            raise CheckpointError(f"{mine} is not rank {self.rank}'s shard of {where}")
        model.load_state_dict(shard["model_state"])
        runner.load_state_dict(shard["runner"])
        return TrainState(**{**saved["train_state"], "best_state": shard["best_state"]})

    @contextlib.contextmanager
    def lock(self, folder):
        """The run folder's lock (:class:`dmfx.checkpoint.RunLock`), taken by rank 0; a folder
        that is busy or not writable stops every rank with rank 0's error."""
        lock = RunLock(folder)
        failure = None
        if self.main:
            try:
                lock.__enter__()
            except (RunFolderBusy, OSError) as error:
                failure = error
        failure = self.broadcast(failure, "waiting for rank 0 to lock the run folder")
        if failure is not None:
            raise failure
        try:
            yield
        finally:
            if self.main:
                lock.__exit__(None, None, None)


class DistributedEpochs(GradientEpochs):
    """:class:`dmfx.train.GradientEpochs` on every rank: the same epoch of pairs, each rank's
    slice of every global batch, gradients summed over the ranks before each step."""

    def __init__(self, model: Recommender, split: Split, config: TrainConfig, world: World):
        super().__init__(model, split, replace(config, progress=config.progress and world.main))
        self.world = world
        local = {id(p) for p in model.shards()} if world.mode == "sharded" else set()
        rows = {id(p) for p in model.sparse_grad_parameters()}
        shared = [p for p in model.parameters() if id(p) not in local]
        self.dense = [p for p in shared if id(p) not in rows]
        self.sparse = [p for p in shared if id(p) in rows]
        # The loss's dtype on a rank with an empty slice: the flat all-reduce must have one
        # dtype on every rank.
        self.dtype = next(model.parameters()).dtype

    def dropout_seed(self, epoch: int) -> int:
        """Rank 0's is one process's; the others' are their own: with one seed, rank r's slice
        would get the masks of rank 0's, row for row."""
        seed = super().dropout_seed(epoch)
        return derive_seed(seed, self.world.rank) if self.world.rank else seed

    def generator_state(self) -> dict:
        """Every rank's, gathered (each draws its own masks): rank 0 writes the checkpoint."""
        states = [None] * self.world.size
        with self.world.guard("gathering the dropout generators"):
            dist.all_gather_object(states, super().generator_state())
        return {"ranks": states}

    def set_generator_state(self, state: dict) -> None:
        # A checkpoint of an older dmfx holds rank 0's alone.
        super().set_generator_state(state["ranks"][self.world.rank] if "ranks" in state else state)

    def run(self, epoch: int, max_steps: int = 0, **kwargs) -> dict:
        stats = super().run(epoch, max_steps, **kwargs)
        stats["peak_memory_mb_per_rank"] = self.world.gather_floats(
            peak_memory_mb(self.model.device), "gathering peak memory")
        return stats

    def step(self, loss_fn, users: Tensor, items: Tensor, targets: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        size = users.numel()
        if self.world.mode == "sharded":
            loss = loss_fn(users, items, targets)  # takes the whole batch: see ShardedDMF.loss
        else:
            lo, hi = self.world.mine(size)
            # The mean over the slice, weighted by its share: the ranks add up to the batch mean.
            loss = loss_fn(users[lo:hi], items[lo:hi], targets[lo:hi]) * ((hi - lo) / size) \
                if hi > lo else None
        if loss is not None:
            loss.backward()
            local = loss.detach() * size
        else:
            local = torch.zeros((), dtype=self.dtype, device=users.device)
        total = self.world.sum_gradients(self.dense, self.sparse, local)
        self.optimizer.step()
        return total


def _table_rows(total: int, lo: int, hi: int, width: int, seed: int, table: int,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Rows [lo, hi) of a ``total`` x ``width`` table of N(0, INIT_STD) weights drawn block by
    block, each block from its own seed: the same table whichever rows a rank holds."""
    out = torch.empty(hi - lo, width, dtype=dtype)
    for block in range(lo // INIT_BLOCK, -(-hi // INIT_BLOCK)):
        start, stop = block * INIT_BLOCK, min(total, (block + 1) * INIT_BLOCK)
        g = torch.Generator().manual_seed(derive_seed(seed, _INIT, table, block))
        rows = torch.empty(stop - start, width, dtype=dtype).normal_(0.0, INIT_STD, generator=g)
        a, z = max(start, lo), min(stop, hi)
        out[a - lo: z - lo] = rows[a - start: z - start]
    return out


def _column_share(train: Interactions, input: str, transpose: bool, lo: int, hi: int) -> CSR:
    """Columns [lo, hi) of Y (of Y^T with ``transpose``), re-numbered from 0: built from the
    interactions in them alone, so a rank never holds the whole matrix, even while building."""
    rows, cols = (train.items, train.users) if transpose else (train.users, train.items)
    keep = np.flatnonzero((cols >= lo) & (cols < hi))
    values = train.ratings[keep] if input == "rating" else np.ones(len(keep), dtype=np.float32)
    shape = (train.num_items if transpose else train.num_users, hi - lo)
    return as_csr(sp.coo_matrix((values, (rows[keep], cols[keep] - lo)), shape=shape).tocsr(),
                  name="the training interactions")


class ShardedTower(nn.Module):
    """A DMF tower holding rows [lo, hi) of its first-layer table (``first``) and the entries
    of its matrix in those columns, re-numbered from 0 (``matrix``, built by
    :func:`_column_share`); :meth:`partial` gives a batch's first-layer sums over them. Row
    ``empty_row`` of the local matrix is empty: the padding."""

    def __init__(self, matrix: CSR, widths: Sequence[int], binary: bool, sparse_grad: bool,
                 activation: str, rows: tuple[int, int], total: int, first: Tensor):
        super().__init__()
        self.binary, self.sparse_grad = binary, sparse_grad
        self.rows, self.total, self.empty_row = rows, total, matrix.shape[0]
        self.register_buffer("indptr", torch.cat([matrix.indptr, matrix.indptr[-1:]]),
                             persistent=False)
        self.register_buffer("indices", matrix.indices, persistent=False)
        self.register_buffer("values", matrix.values, persistent=False)
        self.first = nn.Parameter(first)
        self.mlp = MLP(widths, activation)

    def partial(self, rows: Tensor) -> Tensor:
        return ops.sparse_rows_matmul(self.indptr, self.indices,
                                      None if self.binary else self.values, rows, self.first,
                                      validate=not self.first.is_cuda, sparse_grad=self.sparse_grad)


class ShardedDMF(DMF):
    """:class:`DMF` whose two first-layer tables are split by rows over the ranks of ``world``
    (see the module docstring): same parameters, same :meth:`config`.

    The tables are drawn in blocks of INIT_BLOCK rows, each from a seed of (``seed``, table,
    block), so every world size starts from the same weights; they are not those of a
    one-process DMF, which draws the whole table from torch's global generator. The dense
    layers come from torch's global generator (seeded alike on every rank).
    """

    def __init__(self, train: Interactions, world: World, seed: int, **params):
        # Set before DMF.__init__, which builds the towers through _tower.
        self.world, self.seed = world, seed
        super().__init__(train, **params)

    def _tower(self, side, train, input, widths, binary, sparse_grad, activation):
        transpose = side == "item"
        total = train.num_users if transpose else train.num_items
        lo, hi = self.world.mine(total)
        first = _table_rows(total, lo, hi, widths[0], self.seed, ("user", "item").index(side))
        return ShardedTower(_column_share(train, input, transpose, lo, hi), widths, binary,
                            sparse_grad, activation, (lo, hi), total, first)

    def shards(self) -> list[nn.Parameter]:
        """The parameters this rank holds a share of (the others are replicated)."""
        return [self.user_tower.first, self.item_tower.first]

    def loss(self, users: Tensor, items: Tensor, target: Tensor) -> Tensor:
        """This rank's part of the global batch's mean loss: the summed loss of its slice
        (``World.mine``) over the batch size, so the ranks' parts add up to the batch mean.
        Every rank passes the same whole batch: the first layers exchange partial sums."""
        size = users.numel()
        lo, hi = self.world.mine(size)
        p = self._slice_vectors(self.user_tower, users)
        q = self._slice_vectors(self.item_tower, items)
        if self.score_kind == "dot":
            total = F.binary_cross_entropy_with_logits((p * q).sum(1), target[lo:hi],
                                                       reduction="sum")
        else:
            total = ops.cosine_nce_loss(p, q, target[lo:hi], self.mu, reduction="sum",
                                        validate=not p.is_cuda)
        return total / size

    def _slice_vectors(self, tower: ShardedTower, ids: Tensor) -> Tensor:
        """The tower outputs of this rank's slice of ``ids`` (the whole batch's)."""
        world = self.world
        bounds = world.bounds(ids.numel())
        uniques, slot = [], None
        for r in range(world.size):
            unique, inverse = torch.unique(ids[bounds[r]: bounds[r + 1]], return_inverse=True)
            uniques.append(unique)
            if r == world.rank:
                slot = inverse
        # Every slice padded to the longest with the empty row, so the reduce-scatter's blocks
        # are equal.
        width = max(len(u) for u in uniques)
        rows = torch.full((world.size, width), tower.empty_row, dtype=ids.dtype, device=ids.device)
        for r, unique in enumerate(uniques):
            rows[r, : len(unique)] = unique
        first = world.reduce_scatter(tower.partial(rows.reshape(-1)))
        return tower.mlp(first[: len(uniques[world.rank])]).index_select(0, slot)

    @torch.no_grad()
    def gathered_scorer(self) -> Optional[VectorScorer]:
        """Every user's and item's tower output, on rank 0 (None on the others)."""
        users = self._gathered_outputs(self.user_tower, self.num_users)
        items = self._gathered_outputs(self.item_tower, self.num_items)
        if not self.world.main:
            return None
        return VectorScorer(users, items, normalize=self.score_kind == "cosine")

    def _gathered_outputs(self, tower: ShardedTower, count: int) -> Optional[Tensor]:
        outputs = []
        for chunk in torch.arange(count, device=self.device).split(self.eval_batch):
            first = self.world.reduce_to_main(tower.partial(chunk), "summing tower outputs on rank 0")
            if self.world.main:
                outputs.append(tower.mlp(first))
        return torch.cat(outputs) if self.world.main else None

    def scorer(self) -> VectorScorer:
        raise RuntimeError("a sharded DMF scores through World.evaluate (every rank takes part) "
                           "or, whole, after World.gather_model")

    @property
    def seen(self) -> CSR:
        raise RuntimeError("a sharded DMF holds only its share of Y; use the split's training "
                           "interactions")


class _ReduceScatter(torch.autograd.Function):
    """World.reduce_scatter: every rank's partial sums of every slice in, the complete sums of
    this rank's slice out. Each rank's partial fed every slice, so the gradient of the partial
    is every slice's output gradient: an all-gather."""

    @staticmethod
    def forward(ctx, partial: Tensor, world: World) -> Tensor:
        ctx.world = world
        out = partial.new_empty((partial.shape[0] // world.size, *partial.shape[1:]))
        with world.guard("the reduce-scatter of first-layer sums"):
            _reduce_scatter(out, partial.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        world = ctx.world
        full = grad.new_empty((grad.shape[0] * world.size, *grad.shape[1:]))
        with world.guard("the all-gather of first-layer gradients"):
            _all_gather(full, grad.contiguous())
        return full, None
