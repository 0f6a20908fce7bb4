"""dmfx's ops beside their PyTorch peers: the contenders, their inputs and the checks that they
compute the same thing, shared by ``dmfx bench`` (which times them with
``torch.utils.benchmark``) and the repository's ``benchmarks/`` suites (pytest-benchmark).

One module per op, each with ``problem(...)`` (the op's inputs at a shape), ``CONTENDERS`` and
``OP`` (an :class:`Op`); ``OP.prepare(problem, name)`` returns a :class:`Contender` whose
``fn()`` has already been checked against dmfx's call on that very input. The timing lives
with the callers: pytest-benchmark in ``benchmarks/``, ``dmfx.bench.command`` for the CLI.
"""
from . import cosine_nce_loss, hybrid_bce_loss, sample_negatives, sparse_rows_matmul, train_step
from .core import (BASELINE, CheckFailed, Contender, Op, Unavailable, assert_agree, device_name,
                   synchronized_timer, warm_up)
from .inputs import SHAPES, Shape, load_csr, row_of_entry, to_device, training_rows

# In the order `dmfx bench` runs and prints them.
OPS = {m.OP.name: m.OP for m in (sparse_rows_matmul, cosine_nce_loss, hybrid_bce_loss,
                                   sample_negatives, train_step)}

__all__ = ["OPS", "BASELINE", "CheckFailed", "Contender", "Op", "Unavailable", "assert_agree",
           "device_name", "synchronized_timer", "warm_up", "SHAPES", "Shape", "load_csr",
           "row_of_entry", "to_device", "training_rows"]
