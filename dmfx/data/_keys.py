"""Helpers for ``user * num_items + item`` pair keys shared by splits and synthetic data."""

from __future__ import annotations

import numpy as np


def sorted_contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``keys`` occur in the ascending array ``sorted_keys``."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values; sort-and-compare beats ``np.unique``'s hash path on large int64 keys."""
    keys = np.sort(keys)
    keep = np.ones(len(keys), dtype=bool)
    keep[1:] = keys[1:] != keys[:-1]
    return keys[keep]
