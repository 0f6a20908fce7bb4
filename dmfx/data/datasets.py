"""Named data sets: the bundled MovieLens-100K and a registry of downloadable ones.

Downloads go to a cache directory (``cache_dir``, else ``$DMFX_CACHE``, else
``~/.cache/dmfx``), one folder per data set.  A download is written to a
temporary file and renamed into place only once complete, so an interrupted
download never leaves a truncated file behind.  What was parsed from a
downloaded or local ratings file is kept in the cache directory's
``parsed/`` folder, so that the next load skips the parse (see
:mod:`dmfx.data.cache`).

Integrity: none of the registry entries carries a published SHA-256 (GroupLens
publishes MD5 sums only), so each stores ``sha256=None``; the hash of the
first download is recorded in ``<cache>/<name>/SHA256`` (``sha256sum``
format) and every later load verifies the cached file against it.  An entry
with a known ``sha256`` is verified against that instead.  Local copies passed
with ``data=`` are read as they are, without verification.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import lzma
import os
import tempfile
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from .._files import atomic_write
from .cache import default_cache_dir
from .errors import DataFormatError, DatasetUnavailableError
from .filters import kcore
from .interactions import Interactions
from .readers import (
    _ZIP_MAGIC,
    PathLike,
    _magic,
    cached_with_count_check,
    read_amazon_csv,
    read_movielens_100k,
    read_movielens_csv,
    read_movielens_dat,
)
from .synthetic import synthetic

__all__ = ["DATASETS", "Dataset", "default_cache_dir", "load_dataset"]

_BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
_DOWNLOAD_TIMEOUT_S = 60
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Dataset:
    """One registry entry.

    ``url`` is the download; ``description`` what the data holds (``dmfx
    datasets`` prints it); ``member`` the ratings file inside it when it is
    a zip archive; ``reader`` parses the ratings file; ``min_user`` /
    ``min_item`` the k-core filter applied after reading (0 = none);
    ``bundled`` names a copy shipped in ``dmfx/data/bundled``.
    """

    name: str
    url: str
    reader: Callable[[PathLike], Interactions]
    description: str
    member: str | None = None
    sha256: str | None = None
    min_user: int = 0
    min_item: int = 0
    bundled: str | None = None

    @property
    def filename(self) -> str:
        """Base name of the ratings file (the zip member, else the download)."""
        if self.member is not None:
            return PurePosixPath(self.member).name
        return PurePosixPath(urllib.parse.urlparse(self.url).path).name

    def apply_filter(self, interactions: Interactions) -> Interactions:
        if self.min_user or self.min_item:
            return kcore(interactions, min_user=self.min_user, min_item=self.min_item)
        return interactions


_GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
_AMAZON_2014 = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "ml-100k",
            _GROUPLENS + "ml-100k.zip",
            read_movielens_100k,
            "MovieLens 100K: 943 users, 1,682 movies, 100,000 ratings 1-5 (bundled; usage "
            "license in dmfx/data/bundled/ml-100k-README.txt)",
            member="ml-100k/u.data",
            bundled="ml-100k.data.gz",
        ),
        Dataset(
            "ml-1m",
            _GROUPLENS + "ml-1m.zip",
            read_movielens_dat,
            "MovieLens 1M: 6,040 users, 3,706 movies, 1,000,209 ratings 1-5",
            member="ml-1m/ratings.dat",
        ),
        Dataset(
            "ml-10m",
            _GROUPLENS + "ml-10m.zip",
            read_movielens_dat,
            "MovieLens 10M: 69,878 users, 10,677 movies, 10,000,054 ratings 0.5-5",
            member="ml-10M100K/ratings.dat",
        ),
        Dataset(
            "ml-latest-small",
            _GROUPLENS + "ml-latest-small.zip",
            read_movielens_csv,
            "MovieLens latest small: about 100,000 ratings 0.5-5 by about 600 users (updated over time)",
            member="ml-latest-small/ratings.csv",
        ),
        Dataset(
            "amazon-music",
            _AMAZON_2014 + "ratings_Digital_Music.csv",
            read_amazon_csv,
            "Amazon Digital Music ratings (2014 crawl), users >= 20 and items >= 5 ratings as in DMF",
            min_user=20,
            min_item=5,
        ),
        Dataset(
            "amazon-movies",
            _AMAZON_2014 + "ratings_Movies_and_TV.csv",
            read_amazon_csv,
            "Amazon Movies & TV ratings (2014 crawl), users >= 20 and items >= 5 ratings as in DMF",
            min_user=20,
            min_item=5,
        ),
    )
}
"""Known data sets by name (public so that a command line can list them)."""


def _unavailable(spec: Dataset, reason: str) -> DatasetUnavailableError:
    reason = " ".join(reason.split())  # keep the message on one line
    return DatasetUnavailableError(
        f"{spec.name}: {reason}; download {spec.url} and pass --data PATH "
        f"(or load_dataset({spec.name!r}, data=PATH))"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _record_hash(folder: Path, archive: Path, digest: str) -> None:
    line = f"{digest}  {archive.name}\n".encode()
    atomic_write(folder / "SHA256", lambda f: f.write(line))


def _download(spec: Dataset, archive: Path) -> str:
    """Fetch ``spec.url`` into ``archive`` atomically; return its sha256."""
    digest = hashlib.sha256()

    def write(out: BinaryIO) -> None:
        with urllib.request.urlopen(spec.url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=spec.name, disable=None) as bar:
                while block := response.read(_BLOCK):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
            raise _unavailable(spec, f"downloaded file has sha256 {digest.hexdigest()}, expected {spec.sha256}")

    try:
        atomic_write(archive, write)
    except (OSError, http.client.HTTPException) as exc:
        raise _unavailable(spec, f"could not download {spec.url} ({exc})") from exc
    return digest.hexdigest()


def _verify(spec: Dataset, folder: Path, archive: Path) -> None:
    record = folder / "SHA256"
    expected = spec.sha256
    if expected is None and record.exists():
        expected = record.read_text().split()[0]
    actual = _sha256(archive)
    if expected is None:
        _record_hash(folder, archive, actual)  # placed by hand or recorded before: trust once
    elif actual != expected:
        raise _unavailable(
            spec, f"cached {archive} has sha256 {actual}, expected {expected} (delete {folder} to download again)"
        )


def _find_member(archive: zipfile.ZipFile, spec: Dataset, source: str) -> zipfile.ZipInfo:
    """The ratings member: exact path, else the one file with the expected base name."""
    names = archive.namelist()
    if spec.member in names:
        return archive.getinfo(spec.member)
    matches = [n for n in names if PurePosixPath(n).name == spec.filename]
    if len(matches) == 1:
        return archive.getinfo(matches[0])
    raise DataFormatError(f"{source}: expected a zip archive containing {spec.member}")


def _corrupt_zip(zip_path: Path, exc: BaseException) -> DataFormatError:
    return DataFormatError(f"{zip_path}: expected a zip archive, got a truncated or corrupt one ({exc})")


def _extract(spec: Dataset, zip_path: Path, target: Path) -> str:
    """Copy the ratings member of ``zip_path`` to ``target``; return the member's name.

    Errors of reading the archive, whatever layer raises them (zipfile, the
    decompressors, a seek to an offset read from a damaged header), become
    DataFormatError; errors of writing ``target`` propagate unchanged.
    """
    with contextlib.ExitStack() as stack:
        try:
            archive = stack.enter_context(zipfile.ZipFile(zip_path))
            info = _find_member(archive, spec, os.fspath(zip_path))
            src = stack.enter_context(archive.open(info))
        # RuntimeError: a member flagged as encrypted; UnicodeDecodeError: a member name flagged
        # as UTF-8 that is not.
        except (OSError, RuntimeError, zipfile.BadZipFile, NotImplementedError,
                UnicodeDecodeError) as exc:
            raise _corrupt_zip(zip_path, exc) from exc

        def copy(dst: BinaryIO) -> None:
            while True:
                try:
                    block = src.read(_BLOCK)
                except (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile) as exc:
                    raise _corrupt_zip(zip_path, exc) from exc
                if not block:
                    return
                dst.write(block)

        atomic_write(target, copy)
    return info.filename


def _fetch(spec: Dataset, root: Path) -> Path:
    """Path of the verified ratings file in the cache, downloading it if needed."""
    folder = root / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / PurePosixPath(urllib.parse.urlparse(spec.url).path).name
    if archive.exists():
        _verify(spec, folder, archive)
    else:
        digest = _download(spec, archive)
        if spec.sha256 is None:
            _record_hash(folder, archive, digest)
        if spec.member is not None:
            (folder / spec.filename).unlink(missing_ok=True)  # stale extraction of an older archive
    if spec.member is None:
        return archive
    target = folder / spec.filename
    if not target.exists():
        _extract(spec, archive, target)
    return target


def _local(spec: Dataset, data: PathLike) -> tuple[Path, Callable[[], Interactions]]:
    """The file of a user-supplied copy (the ratings file, the downloaded zip, or either in a
    folder ``data``) and how to read it."""
    path = Path(data)
    if path.is_dir():
        candidates = [path / spec.filename]
        if spec.member is not None:
            candidates.insert(0, path / spec.member)
        for candidate in candidates:
            if candidate.is_file():
                return candidate, functools.partial(spec.reader, candidate)
        raise FileNotFoundError(
            f"{path}: expected {' or '.join(map(str, candidates))} for data set {spec.name!r}"
        )
    # The magic bytes, not zipfile.is_zipfile: a truncated archive must be reported as one.
    if spec.member is not None and _magic(path) == _ZIP_MAGIC:
        return path, functools.partial(_read_member, spec, path)
    return path, functools.partial(spec.reader, path)


def _read_member(spec: Dataset, path: Path) -> Interactions:
    """Read the ratings member of the zip archive ``path``."""
    with tempfile.TemporaryDirectory(prefix="dmfx-") as tmp:
        target = Path(tmp) / spec.filename
        member = _extract(spec, path, target)
        # Errors and warnings name the member of the user's archive, not the temporary copy.
        named = f"{path}/{member}"
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                data = spec.reader(target)
        except DataFormatError as exc:
            raise DataFormatError(str(exc).replace(os.fspath(target), named, 1)) from None
        for w in caught:  # re-issued under the caller's own filters
            warnings.warn(str(w.message).replace(os.fspath(target), named, 1), w.category,
                          stacklevel=2)
        return data


SYNTHETIC_PREFIX = "synthetic:"


def _synthetic_from_name(name: str) -> Interactions:
    """``synthetic:USERSxITEMSxRATINGS`` (e.g. ``synthetic:2000000x1000000x50000000``): the
    power-law generator of :func:`dmfx.data.synthetic` with seed 0, for scale runs."""
    sizes = name[len(SYNTHETIC_PREFIX):].lower().replace("_", "").split("x")
    try:
        num_users, num_items, nnz = (int(v) for v in sizes)
    except ValueError:
        raise ValueError(f"{name!r}: write {SYNTHETIC_PREFIX}USERSxITEMSxRATINGS with three "
                         f"positive integers, e.g. {SYNTHETIC_PREFIX}6040x3706x1000000") from None
    if min(num_users, num_items, nnz) <= 0:
        raise ValueError(f"{name!r}: users, items and ratings must be positive")
    return synthetic(num_users, num_items, nnz, seed=0)


def load_dataset(
    name: str,
    cache_dir: PathLike | None = None,
    data: PathLike | None = None,
    cache: bool = True,
) -> Interactions:
    """Load a named data set as :class:`Interactions`, with its registry filter applied.

    ``data=PATH`` reads a local copy instead of the bundled file or the
    download: the ratings file itself, the archive as downloaded from the
    registry URL, or a folder containing either.  Otherwise ``ml-100k`` comes
    from the package (no network); the others are downloaded once into the
    cache (see the module docstring for hashing).  Raises ValueError for an
    unknown name and :class:`DatasetUnavailableError` when a download fails.

    A downloaded or local ratings file is parsed once: what was read (before
    the filter) is kept under ``cache_dir`` (default :func:`default_cache_dir`)
    and loaded from there until the file changes; see :mod:`dmfx.data.cache`.
    ``cache=False`` (or ``DMFX_NO_CACHE=1``) parses it every time.
    """
    if name.startswith(SYNTHETIC_PREFIX):
        if data is not None:
            raise ValueError("a synthetic data set has no local copy; drop --data")
        return _synthetic_from_name(name)
    spec = DATASETS.get(name)
    if spec is None:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}, or "
                         f"{SYNTHETIC_PREFIX}USERSxITEMSxRATINGS")
    how = f"load_dataset({name!r})"
    if data is not None:
        source, read = _local(spec, data)
        interactions = cached_with_count_check(source, how, read, cache_dir, enabled=cache)
    elif spec.bundled is not None:
        interactions = spec.reader(_BUNDLED_DIR / spec.bundled)  # small: parsed in a blink
    else:
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        source = _fetch(spec, root)
        interactions = cached_with_count_check(source, how, functools.partial(spec.reader, source),
                                               root, enabled=cache)
    return spec.apply_filter(interactions)
