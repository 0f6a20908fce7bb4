"""dmfx's ops beside their PyTorch peers: the contenders, their inputs, the checks that they
compute the same thing and how a call is timed, shared by ``dmfx bench`` and the repository's
``benchmarks/`` suites (pytest-benchmark).

One module per op, each with ``problem(...)`` (the op's inputs at a shape), ``CONTENDERS`` and
``OP`` (an :class:`Op`); ``OP.prepare(problem, name)`` returns a :class:`Contender` whose
``fn()`` has already been checked against dmfx's call on that very input. :func:`plan` warms a
call up and sizes its timed blocks; ``dmfx bench`` times them with :func:`measure`, the suites
hand the same plan to pytest-benchmark (``benchmarks/harness.py``). Both run in full float32
(:func:`full_float32`: no TF32).
"""
from . import cosine_nce_loss, hybrid_bce_loss, sample_negatives, sparse_rows_matmul, train_step
from .core import (BASELINE, CheckFailed, Contender, Measurement, Op, Unavailable, assert_agree,
                   commit_info, device_name, driver_version, full_float32, measure, plan,
                   precision_settings, synchronized_timer, warm_up)
from .inputs import SHAPES, Shape, load_csr, row_of_entry, to_device, training_rows

# In the order `dmfx bench` runs and prints them.
OPS = {m.OP.name: m.OP for m in (sparse_rows_matmul, cosine_nce_loss, hybrid_bce_loss,
                                   sample_negatives, train_step)}

__all__ = ["OPS", "BASELINE", "CheckFailed", "Contender", "Measurement", "Op", "Unavailable",
           "assert_agree", "commit_info", "device_name", "driver_version", "full_float32",
           "measure", "plan", "precision_settings", "synchronized_timer", "warm_up", "SHAPES",
           "Shape", "load_csr", "row_of_entry", "to_device", "training_rows"]
