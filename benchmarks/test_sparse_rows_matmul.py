"""First layer of a DMF tower, forward + backward w.r.t. the weight: dmfx vs PyTorch's ways.

The contenders (dmfx, embedding_bag, sparse.mm, dense rows), their inputs and the check of each
against dmfx are :mod:`dmfx.bench.sparse_rows_matmul`'s, shared with ``dmfx bench``; this file
picks the shapes and times them with pytest-benchmark.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from benchmarks.harness import measure, prepared
from dmfx.bench import sparse_rows_matmul as op


@dataclass(frozen=True)
class Case:
    matrix: str
    hidden: int
    batch: int
    cuda_only: bool = False
    big: bool = False

    @property
    def id(self) -> str:
        return f"{self.matrix}-h{self.hidden}-B{self.batch}"


CASES = [
    Case("ml-100k", 256, 256),
    Case("ml-1m", 256, 256),
    Case("ml-1m", 256, 8192),
    Case("amazon-movies", 256, 8192, cuda_only=True),
    Case("2m-1m-50m", 64, 8192, cuda_only=True, big=True),
]
CONTENDERS = op.CONTENDERS


@functools.lru_cache(maxsize=1)  # one case at a time: the 50M-ratings weight is large
def _problem(case: Case, csr) -> op.Problem:
    return op.problem(csr, case.hidden, case.batch)


def test_sparse_rows_matmul(benchmark, matrix, case, contender):
    problem = _problem(case, matrix(case.matrix))
    fn = prepared(op.OP, problem, contender)
    measure(benchmark, fn, group=f"sparse_rows_matmul fwd+bwd {case.id}", contender=contender,
            nnz_in_batch=problem.nnz_in_batch)
