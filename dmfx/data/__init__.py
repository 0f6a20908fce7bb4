"""Data layer of dmfx: interactions, file readers, named data sets, splits and synthetic data.

Everything a training script needs is re-exported here::

    from dmfx.data import load_dataset, leave_one_out
    data = load_dataset("ml-100k")             # bundled, no network
    split = leave_one_out(data, num_negatives=100, seed=0)
    Y = split.train.csr(values="rating")      # CSR of the user x item matrix

Interop: :func:`as_csr` reads scipy.sparse matrices, torch sparse tensors and dmfx CSRs
(without copying a CSR already in the right layout); :meth:`Interactions.from_scipy` /
:meth:`~Interactions.to_scipy` and :meth:`Interactions.from_pandas` /
:meth:`~Interactions.to_pandas` convert whole data sets.
"""

from .atomic import read_atomic, write_atomic
from .datasets import DATASETS, Dataset, default_cache_dir, load_dataset
from .errors import DataFormatError, DatasetUnavailableError
from .filters import kcore
from .interactions import Interactions, read_npz
from .readers import (
    FORMATS,
    read_amazon_csv,
    read_delimited,
    read_file,
    read_movielens_100k,
    read_movielens_csv,
    read_movielens_dat,
)
from .sparse import CSR, as_csr
from .splits import Split, leave_one_out, ratio_split
from .synthetic import synthetic

__all__ = [
    "CSR",
    "DATASETS",
    "FORMATS",
    "DataFormatError",
    "Dataset",
    "DatasetUnavailableError",
    "Interactions",
    "as_csr",
    "Split",
    "default_cache_dir",
    "kcore",
    "leave_one_out",
    "ratio_split",
    "load_dataset",
    "read_amazon_csv",
    "read_delimited",
    "read_file",
    "read_movielens_100k",
    "read_movielens_csv",
    "read_movielens_dat",
    "read_atomic",
    "read_npz",
    "synthetic",
    "write_atomic",
]
