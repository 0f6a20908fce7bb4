"""Interactions container, CSR export, k-core filter and named data sets."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dmfx.data import (
    DATASETS,
    DataFormatError,
    DatasetUnavailableError,
    Interactions,
    kcore,
    load_dataset,
    read_amazon_csv,
    read_movielens_dat,
    read_npz,
    synthetic,
)

FIXTURES = Path(__file__).parent / "fixtures"
# The fixtures' ratings.dat repeats a pair on purpose (tests/test_data_readers.py checks the warning).
pytestmark = pytest.mark.filterwarnings(r"ignore:.*duplicated \(user, item\) row:UserWarning")


def small() -> Interactions:
    return Interactions.from_arrays(
        ["carol", "alice", "bob", "alice", "carol", "bob"],
        [30, 10, 20, 30, 10, 10],
        [1, 5, 2, 3, 4, 1],
        [6, 1, 2, 3, 5, 4],
    )


# --- Interactions -----------------------------------------------------------------


def test_from_arrays_builds_sorted_deterministic_id_maps() -> None:
    x = small()
    assert x.user_ids.tolist() == ["alice", "bob", "carol"]
    assert x.item_ids.tolist() == [10, 20, 30]
    assert (x.num_users, x.num_items, x.nnz, x.max_rating) == (3, 3, 6, 5.0)
    assert x.users.tolist() == [2, 0, 1, 0, 2, 1]
    assert x.items.tolist() == [2, 0, 1, 2, 0, 0]
    assert x.users.dtype == np.int64 and x.items.dtype == np.int64
    assert x.ratings.dtype == np.float32 and x.timestamps.dtype == np.int64


def test_unsigned_ids_beyond_int64_are_refused_not_wrapped() -> None:
    fits = Interactions.from_arrays(np.array([2**63 - 1, 1], np.uint64), [1, 2], [1, 1])
    assert fits.user_ids.tolist() == [1, 2**63 - 1]
    with pytest.raises(ValueError, match=r"users_raw holds ids above 2\*\*63 - 1.*as strings"):
        Interactions.from_arrays(np.array([2**63 + 5, 1], np.uint64), [1, 2], [1, 1])


def test_index_lookup_accepts_str_and_int() -> None:
    x = small()
    assert x.user_index("bob") == 1
    assert x.item_index(20) == 1
    assert x.item_index("20") == 1  # e.g. from a command line
    assert x.item_index(np.int32(30)) == 2
    for bad in ("dave", 7):
        with pytest.raises(KeyError, match="unknown user id"):
            x.user_index(bad)
    for bad in ("abc", 11, 2.5):
        with pytest.raises(KeyError, match="unknown item id"):
            x.item_index(bad)
    ml = read_movielens_dat(FIXTURES / "ratings.dat")
    assert ml.user_index("2") == ml.user_index(2) == 1


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Interactions(np.array([2, 1]), np.array([0]), [0], [0], [1.0])
    with pytest.raises(ValueError, match=r"users must lie in \[0, 2\)"):
        Interactions(np.array([1, 2]), np.array([0]), [2], [0], [1.0])
    with pytest.raises(ValueError, match="ratings has 2 entries"):
        Interactions(np.array([1, 2]), np.array([0]), [0], [0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        Interactions(np.array([1]), np.array([0]), [0], [0], [np.nan])


def test_csr_matches_scipy_dense_and_is_sorted() -> None:
    x = synthetic(40, 30, 300, seed=3)
    dense = np.zeros((40, 30), dtype=np.float32)
    dense[x.users, x.items] = x.ratings
    for transpose in (False, True):
        expect = dense.T if transpose else dense
        for values, want in (("rating", expect), ("binary", (expect != 0).astype(np.float32))):
            csr = x.csr(values=values, transpose=transpose)
            assert csr.shape == want.shape
            # int32 by default where everything fits: 4 bytes less per stored interaction.
            assert csr.indptr.dtype == torch.int32 and csr.indices.dtype == torch.int32
            wide = x.csr(values=values, transpose=transpose, index_dtype=torch.int64)
            assert wide.indptr.dtype == torch.int64 and wide.indices.dtype == torch.int64
            assert torch.equal(wide.indices, csr.indices.long())
            assert csr.values.dtype == torch.float32
            indptr, indices = csr.indptr.numpy(), csr.indices.numpy()
            rebuilt = np.zeros(csr.shape, dtype=np.float32)
            rebuilt[np.repeat(np.arange(csr.shape[0]), np.diff(indptr)), indices] = csr.values.numpy()
            np.testing.assert_array_equal(rebuilt, want)
            np.testing.assert_array_equal(x.to_scipy(values, transpose).toarray(), want)
            for r in range(csr.shape[0]):
                row = indices[indptr[r] : indptr[r + 1]]
                assert np.all(np.diff(row) > 0), f"row {r} not strictly ascending"


def test_csr_rows_sorted_even_when_input_is_unsorted() -> None:
    x = Interactions.from_arrays([1, 1, 1, 2], [9, 3, 5, 1], [1, 2, 3, 4])
    csr = x.csr()
    assert csr.indptr.tolist() == [0, 3, 4]
    assert csr.indices.tolist() == [1, 2, 3, 0]  # items 3, 5, 9 then 1
    assert csr.values.tolist() == [2.0, 3.0, 1.0, 4.0]


def test_csr_int32_indices_and_device() -> None:
    csr = small().csr(index_dtype=torch.int32, device="cpu")
    assert csr.indptr.dtype == torch.int32 and csr.indices.dtype == torch.int32
    assert csr.indptr.device.type == "cpu"
    assert csr.indptr.tolist() == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="index_dtype"):
        small().csr(index_dtype=torch.int16)
    with pytest.raises(ValueError, match="values must be"):
        small().csr(values="count")  # type: ignore[arg-type]


def test_csr_rejects_hand_built_duplicates() -> None:
    x = Interactions(np.array([0]), np.array([0]), [0, 0], [0, 0], [1.0, 2.0])
    with pytest.raises(ValueError, match="duplicate"):
        x.csr()


def test_select_keeps_id_maps() -> None:
    x = small()
    part = x.select(x.ratings >= 3)
    assert (part.num_users, part.num_items, part.nnz) == (3, 3, 3)
    assert part.user_ids is x.user_ids
    assert part.ratings.tolist() == [5.0, 3.0, 4.0]
    assert part.timestamps.tolist() == [1, 3, 5]
    with pytest.raises(ValueError, match="boolean"):
        x.select(np.array([0, 1]))


def test_npz_round_trip(tmp_path: Path) -> None:
    x = small()
    x.save_npz(tmp_path / "x.npz")
    y = read_npz(tmp_path / "x.npz")
    for name in ("user_ids", "item_ids", "users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(y, name), getattr(x, name))
    assert y.user_index("carol") == 2
    assert Interactions.read_npz(tmp_path / "x.npz").nnz == x.nnz
    np.savez(tmp_path / "bad.npz", users=np.zeros(2))
    with pytest.raises(ValueError, match="missing user_ids, item_ids, items, ratings"):
        read_npz(tmp_path / "bad.npz")


# --- k-core -----------------------------------------------------------------------


def test_kcore_cascade_by_hand() -> None:
    # u3 has 1 rating -> removed; that drops item C to 1 rating -> removed;
    # which drops u2 to 1 rating -> removed.  u1 and u4 with items A, B survive.
    pairs = [("u1", "A"), ("u1", "B"), ("u2", "B"), ("u2", "C"), ("u3", "C"), ("u4", "A"), ("u4", "B")]
    x = Interactions.from_arrays([u for u, _ in pairs], [i for _, i in pairs], np.arange(1, 8))
    core = kcore(x, min_user=2, min_item=2)
    assert core.user_ids.tolist() == ["u1", "u4"]
    assert core.item_ids.tolist() == ["A", "B"]
    got = {(core.user_ids[u], core.item_ids[i], r) for u, i, r in zip(core.users, core.items, core.ratings)}
    assert got == {("u1", "A", 1.0), ("u1", "B", 2.0), ("u4", "A", 6.0), ("u4", "B", 7.0)}
    assert core.timestamps is None


def test_kcore_fixed_point_on_random_data() -> None:
    x = synthetic(300, 200, 3000, seed=7)
    core = kcore(x, min_user=10, min_item=6)
    assert 0 < core.nnz < x.nnz
    assert np.bincount(core.users, minlength=core.num_users).min() >= 10
    assert np.bincount(core.items, minlength=core.num_items).min() >= 6
    # maximality: the surviving pairs are exactly those of the original on the surviving ids
    keep_u = np.isin(x.user_ids[x.users], core.user_ids)
    keep_i = np.isin(x.item_ids[x.items], core.item_ids)
    assert core.nnz == int((keep_u & keep_i).sum())
    # kcore of a k-core is itself
    again = kcore(core, min_user=10, min_item=6)
    np.testing.assert_array_equal(again.user_ids, core.user_ids)
    assert again.nnz == core.nnz
    np.testing.assert_array_equal(core.timestamps, x.timestamps[keep_u & keep_i])


# --- named data sets --------------------------------------------------------------


def test_bundled_movielens_100k() -> None:
    x = load_dataset("ml-100k")
    assert (x.num_users, x.num_items, x.nnz, x.max_rating) == (943, 1682, 100_000, 5.0)
    assert x.ratings.min() == 1.0
    assert x.user_ids[0] == 1 and x.user_ids[-1] == 943
    bundled = Path(__import__("dmfx.data", fromlist=["x"]).__file__).parent / "bundled"
    assert "USAGE LICENSE" in (bundled / "ml-100k-README.txt").read_text()


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown data set 'ml-5m'; known: ml-100k, ml-1m"):
        load_dataset("ml-5m")
    assert {"ml-100k", "ml-1m", "ml-10m", "ml-latest-small", "amazon-music", "amazon-movies"} <= set(DATASETS)


def test_download_failure_says_how_to_use_a_local_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("ml-1m", cache_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert DATASETS["ml-1m"].url in message
    assert "--data PATH" in message and "load_dataset('ml-1m', data=PATH)" in message
    assert isinstance(err.value, RuntimeError)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "no partial download left behind"


def _zip_bytes(member: str, source: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.write(source, member)
    return buffer.getvalue()


def test_download_caches_records_and_verifies_hash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    payload = _zip_bytes("ml-1m/ratings.dat", FIXTURES / "ratings.dat")
    calls: list[str] = []

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    def fake_urlopen(url: str, timeout: float) -> Response:
        calls.append(url)
        return Response(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    first = load_dataset("ml-1m", cache_dir=tmp_path)
    assert first.nnz == read_movielens_dat(FIXTURES / "ratings.dat").nnz
    folder = tmp_path / "ml-1m"
    recorded = (folder / "SHA256").read_text().split()
    assert recorded == [hashlib.sha256(payload).hexdigest(), "ml-1m.zip"]
    assert load_dataset("ml-1m", cache_dir=tmp_path).nnz == first.nnz
    assert calls == [DATASETS["ml-1m"].url], "second load must come from the cache"
    (folder / "ml-1m.zip").write_bytes(payload + b"tampered")
    with pytest.raises(DatasetUnavailableError, match="expected " + recorded[0]):
        load_dataset("ml-1m", cache_dir=tmp_path)


def test_local_copy_as_file_zip_or_folder(tmp_path: Path) -> None:
    expected = read_movielens_dat(FIXTURES / "ratings.dat")
    archive = tmp_path / "ml-1m.zip"
    archive.write_bytes(_zip_bytes("ml-1m/ratings.dat", FIXTURES / "ratings.dat"))
    folder = tmp_path / "unpacked"
    (folder / "ml-1m").mkdir(parents=True)
    (folder / "ml-1m" / "ratings.dat").write_bytes((FIXTURES / "ratings.dat").read_bytes())
    for data in (FIXTURES / "ratings.dat", archive, folder, str(folder / "ml-1m")):
        x = load_dataset("ml-1m", data=data)
        np.testing.assert_array_equal(x.users, expected.users)
        np.testing.assert_array_equal(x.ratings, expected.ratings)
    assert load_dataset("ml-100k", data=FIXTURES / "u.data").nnz == 4


def test_damaged_local_zip_is_a_data_format_error(tmp_path: Path) -> None:
    whole = _zip_bytes("ml-1m/ratings.dat", FIXTURES / "ratings.dat")
    truncated = tmp_path / "truncated.zip"  # not even recognised by zipfile.is_zipfile
    truncated.write_bytes(whole[: len(whole) // 2])
    corrupt = tmp_path / "corrupt.zip"  # intact directory, member bytes changed: CRC mismatch
    start = whole.index(b"ml-1m/ratings.dat") + len("ml-1m/ratings.dat")
    corrupt.write_bytes(whole[:start] + bytes(b ^ 1 for b in whole[start : start + 20]) + whole[start + 20 :])
    for path in (truncated, corrupt):
        with pytest.raises(DataFormatError, match=rf"^{path}: expected a zip archive, got a truncated or corrupt"):
            load_dataset("ml-1m", data=path)


def test_a_warning_from_a_local_zip_names_the_member(tmp_path: Path) -> None:
    archive = tmp_path / "ml-1m.zip"
    archive.write_bytes(_zip_bytes("ml-1m/ratings.dat", FIXTURES / "ratings.dat"))
    with pytest.warns(UserWarning, match="duplicated") as caught:
        load_dataset("ml-1m", data=archive)
    assert [str(w.message).split(":")[0] for w in caught] == [f"{archive}/ml-1m/ratings.dat"]


def test_bad_line_in_local_zip_names_the_member(tmp_path: Path) -> None:
    archive = tmp_path / "ml-1m.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", "1::10::5::978300760\n1::20::x::978300761\n")
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(DataFormatError, match=rf"^{archive}/ml-1m/ratings\.dat:2: expected a numeric rating"):
        load_dataset("ml-1m", data=archive)


def test_local_amazon_copy_gets_the_paper_filter(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for u in range(30):  # users 0..24 rate 25 items from a pool of 40, users 25..29 only 3
        count = 25 if u < 25 else 3
        for item in rng.choice(40, size=count, replace=False):
            lines.append(f"A{u:05d},B{item:05d},{rng.integers(1, 6)}.0,{1_400_000_000 + len(lines)}\n")
    path = tmp_path / "ratings_Digital_Music.csv"
    path.write_text("".join(lines))
    raw = read_amazon_csv(path)
    x = load_dataset("amazon-music", data=path)
    assert x.nnz < raw.nnz
    assert np.bincount(x.users).min() >= 20
    assert np.bincount(x.items).min() >= 5
    assert not set(x.user_ids.tolist()) & {f"A{u:05d}" for u in range(25, 30)}
