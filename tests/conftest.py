"""Shared fixtures: devices, index dtypes, random CSR matrices, small data sets, and a private
cache directory for the whole session."""
from typing import NamedTuple

import numpy as np
import pytest
import torch

import dmfx
from dmfx.data import Interactions, leave_one_out, synthetic

CUDA_READY = torch.cuda.is_available() and dmfx.cuda_enabled()
CUDA_SKIP_REASON = (
    "no CUDA device" if not torch.cuda.is_available() else "dmfx was built without CUDA kernels"
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_READY, reason=CUDA_SKIP_REASON)),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=[torch.int32, torch.int64], ids=["int32", "int64"])
def index_dtype(request):
    return request.param


class Csr(NamedTuple):
    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    num_rows: int
    num_cols: int

    def dense(self) -> torch.Tensor:
        return torch.sparse_csr_tensor(
            self.indptr.long().cpu(), self.indices.long().cpu(), self.values.cpu(),
            (self.num_rows, self.num_cols),
        ).to_dense()


def random_csr(num_rows, num_cols, density=0.3, *, seed=0, index_dtype=torch.int64,
               dtype=torch.float64, device="cpu") -> Csr:
    """A random CSR matrix with sorted rows that always has the edge cases: an empty first row,
    a row with exactly one entry, and (when there are enough rows) a full row."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(num_rows, num_cols, generator=g) < density
    mask[0] = False
    if num_rows > 1:
        mask[1] = False
        mask[1, torch.randint(num_cols, (1,), generator=g)] = True
    if num_rows > 3:
        mask[3] = True
    dense = torch.where(mask, torch.rand(num_rows, num_cols, generator=g, dtype=dtype) + 0.5, 0)
    csr = dense.to_sparse_csr()
    return Csr(
        csr.crow_indices().to(index_dtype).to(device),
        csr.col_indices().to(index_dtype).to(device),
        csr.values().clone().to(device),  # a plain tensor, not a view into the sparse one
        num_rows,
        num_cols,
    )


def clustered(num_users=200, num_items=300, groups=5, per_user=30, inside=0.8, seed=0):
    """Users and items in groups; a user's items come from its group with probability
    ``inside``, else by popularity; ratings 1-5, higher inside the group. Data where a model
    must personalise to beat ItemPop (``dmfx.data.synthetic`` draws the pairs by popularity
    alone, so there ItemPop is the best possible ranking)."""
    rng = np.random.default_rng(seed)
    user_group = rng.integers(groups, size=num_users)
    item_group = rng.permutation(np.arange(num_items) % groups)
    popularity = 1.0 / (1 + rng.permutation(num_items)) ** 0.8
    users, items = [], []
    for u in range(num_users):
        w = popularity * np.where(item_group == user_group[u], inside / (1 - inside) * groups, 1.0)
        items.append(rng.choice(num_items, size=per_user, replace=False, p=w / w.sum()))
        users.append(np.full(per_user, u))
    users, items = np.concatenate(users), np.concatenate(items)
    order = rng.permutation(len(users))
    users, items = users[order], items[order]
    ratings = np.clip(rng.integers(1, 4, size=len(users)) + 2 * (item_group[items] == user_group[users]), 1, 5)
    return Interactions(np.arange(num_users), np.arange(num_items), users, items,
                        ratings, np.arange(len(users)))


@pytest.fixture(scope="module")
def clustered_split():
    return leave_one_out(clustered(), num_negatives=30, seed=0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: extra threads only wait for each other on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded_generator():
    """Every test starts from the same state of torch's global generator, whatever ran before:
    its unseeded draws (upstream gradients, dropout, initial weights) repeat when it runs alone."""
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """dmfx's cache (downloads, parsed ratings files) in a temporary folder, for every test and
    the processes they start: never the user's ~/.cache/dmfx or $DMFX_CACHE."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DMFX_CACHE", str(tmp_path_factory.mktemp("dmfx-cache")))
        yield


@pytest.fixture(scope="session")
def data_file(tmp_path_factory):
    """A tiny ratings file (50 users, 90 items) for command-line runs; read, never changed."""
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    synthetic(50, 90, 1200, seed=2).save_npz(path)
    return path
