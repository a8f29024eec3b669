"""An on-disk cache of a datamodule's index, so that a large corpus is scanned once, not on every run.

Building the index of a paper-sized corpus (opening a million GeoTIFFs for their footprints, reading every
acquisition once to find the chips without cloud) takes minutes to hours; the index itself is small (paths,
shapes, dates, chip offsets). :func:`cached_index` keeps it under the cache folder, keyed by

- the data folder's absolute path and every file under it, with its size and modification time (a file added,
  removed, replaced or touched rebuilds the index), and
- the plugin's ``key``: the settings the index depends on (bands, chip size, stride, ...) and a version the
  plugin bumps when the index's layout changes.

The cache lives in ``$SSL_DOMAINS_CACHE/index`` (default ``~/.cache/ssl-domains/index``), not in the data folder,
which is often read-only and shared on clusters. A cache that cannot be read is rebuilt; one that cannot be
written (read-only home, full disk) is a warning, and the run goes on with the index it built.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "cache_root",
    "cached_array_folder",
    "cached_arrays",
    "cached_folder",
    "cached_index",
    "files_signature",
    "tree_signature",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

CACHE_ENV = "SSL_DOMAINS_CACHE"


def cache_root() -> Path:
    """The folder of the package's caches: ``$SSL_DOMAINS_CACHE``, else ``$XDG_CACHE_HOME/ssl-domains``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssl-domains"


def _walk(folder: str, digest: Any) -> int:
    count = 0
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=True):
                count += _walk(entry.path, digest)
            elif entry.is_file(follow_symlinks=True):
                info = entry.stat()
                digest.update(f"{entry.path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
                count += 1
    return count


def tree_signature(root: Path) -> tuple[int, str]:
    """``(files, sha256)`` over every file under ``root`` (or ``root`` itself): its path, size and mtime.

    One ``stat`` per file and no reads: about 1 s for 100k files on a local disk.
    """
    root = Path(root).resolve()
    digest = hashlib.sha256()
    if root.is_file():
        info = root.stat()
        digest.update(f"{root}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        return 1, digest.hexdigest()
    return _walk(str(root), digest), digest.hexdigest()


def files_signature(paths: Sequence[Path]) -> tuple[int, str]:
    """``(files, sha256)`` over the given files in the given order: path, size and mtime (a manifest's clips)."""
    digest = hashlib.sha256()
    for path in paths:
        info = os.stat(path)
        digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return len(paths), digest.hexdigest()


def _entry(root: Path, key: Mapping[str, Any], files: Sequence[Path] | None, suffix: str) -> tuple[int, Path]:
    """``(files, where the cache entry of these files and this key lives)``."""
    count, signature = tree_signature(root) if files is None else files_signature(files)
    identity = json.dumps({"root": str(Path(root).resolve()), "files": signature, "key": dict(key)}, sort_keys=True)
    return count, cache_root() / "index" / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}{suffix}"


@contextlib.contextmanager
def _building(entry: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``<entry>.lock`` while one process checks and builds the cache entry: the DDP
    ranks of a machine (or of a cluster, on a filesystem with ``flock``) set up at the same time, and without it
    each would scan the corpus and write its own copy of a cache as large as the corpus, all but one thrown away.
    The others wait, then read what the first wrote."""
    try:
        import fcntl

        entry.parent.mkdir(parents=True, exist_ok=True)
        lock = open(entry.with_name(entry.name + ".lock"), "a")  # noqa: SIM115 (closed below)
    except (ImportError, OSError):  # no flock (Windows) or a read-only cache: unlocked, the atomic rename keeps one
        yield
        return
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        lock.close()  # closing releases the lock


def cached_index(
    root: Path,
    key: Mapping[str, Any],
    build: Callable[[], T],
    *,
    enabled: bool = True,
    files: Sequence[Path] | None = None,
) -> T:
    """``build()``, or the value it returned the last time for the same files under ``root`` and the same ``key``.

    ``key`` must be JSON-serialisable and name everything besides the files that the index depends on. ``files``
    replaces the walk of ``root`` with exactly those files (a manifest's entries, which may lie anywhere). With
    ``enabled=False`` the index is always built and nothing is written.
    """
    if not enabled:
        return build()
    count, path = _entry(root, key, files, ".pkl")
    with _building(path):
        return _cached_pickle(root, count, path, build)


def _cached_pickle(root: Path, count: int, path: Path, build: Callable[[], T]) -> T:
    if path.is_file():
        try:
            with path.open("rb") as f:
                value = pickle.load(f)
            log.info("%s: index of %d files read from the cache (%s)", root, count, path)
            return value
        except Exception as exc:  # a truncated or foreign file: rebuild it
            log.warning("%s: the index cache %s cannot be read (%s); rebuilding it", root, path, exc)
    value = build()
    try:
        from .checkpoint import atomic_write

        atomic_write(path, lambda tmp: tmp.write_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)))
        log.info("%s: index of %d files cached in %s", root, count, path)
    except Exception as exc:  # the cache is an optimisation: a read-only or full disk must not fail the run
        log.warning("%s: could not cache the index in %s (%s); the next run will scan the data again", root, path, exc)
    return value


def _load_arrays(folder: Path, mmap_mode: str) -> dict[str, np.ndarray]:
    import numpy as np

    return {p.stem: np.load(p, mmap_mode=mmap_mode) for p in sorted(folder.glob("*.npy"))}  # type: ignore[arg-type]


def cached_folder(
    root: Path,
    key: Mapping[str, Any],
    write: Callable[[Path], None],
    load: Callable[[Path], T],
    *,
    files: Sequence[Path] | None = None,
) -> T:
    """``load(folder)`` of a folder that ``write(folder)`` filled, kept under the cache for the same files and
    ``key``. The folder is written beside its place and renamed into it whole: a reader sees all of it or none,
    and an interrupted ``write`` leaves nothing. A folder ``load`` cannot read is rebuilt. A cache that cannot be
    written is an error here, since what it holds (arrays larger than RAM, decoded pixels) may not fit in memory."""
    count, folder = _entry(root, key, files, ".arrays")
    with _building(folder):
        return _cached_folder(root, count, folder, write, load)


def _cached_folder(root: Path, count: int, folder: Path, write: Callable[[Path], None], load: Callable[[Path], T]) -> T:
    if folder.is_dir():
        try:
            value = load(folder)
            log.info("%s: index of %d files read from the cache (%s)", root, count, folder)
            return value
        except Exception as exc:  # a truncated or foreign file: rebuild it
            log.warning("%s: the index cache %s cannot be read (%s); rebuilding it", root, folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(tmp)
        os.replace(tmp, folder)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (isinstance(exc, OSError) and folder.is_dir()):  # unless a DDP rank put the same folder there first
            raise
    log.info("%s: index of %d files cached in %s", root, count, folder)
    return load(folder)


def cached_array_folder(
    root: Path,
    key: Mapping[str, Any],
    write: Callable[[Path], None],
    *,
    files: Sequence[Path] | None = None,
    mmap_mode: str = "r",
) -> dict[str, np.ndarray]:
    """:func:`cached_folder` of arrays that ``write(folder)`` puts in it as ``<name>.npy`` files (with
    ``numpy.lib.format.open_memmap`` for arrays larger than RAM, filled a block at a time), given back
    memory-mapped (``mmap_mode``: ``"r"``, or ``"c"`` for arrays that ``torch.from_numpy`` wraps)."""
    return cached_folder(root, key, write, lambda folder: _load_arrays(folder, mmap_mode), files=files)


def cached_arrays(
    root: Path,
    key: Mapping[str, Any],
    build: Callable[[], Mapping[str, np.ndarray]],
    *,
    enabled: bool = True,
    files: Sequence[Path] | None = None,
) -> dict[str, np.ndarray]:
    """As :func:`cached_index`, for an index made of NumPy arrays that grow with the corpus (per-item points,
    offsets): they are kept as ``.npy`` files and come back memory-mapped, read-only, so a run holds in RAM only
    the pages it touches, and forked loader workers share them. Without a cache (``enabled=False``, or one that
    cannot be written) the built arrays are returned as they are."""
    import numpy as np

    if not enabled:
        return dict(build())
    built: dict[str, np.ndarray] = {}

    def write(folder: Path) -> None:
        built.update(build())
        for name, array in built.items():
            np.save(folder / f"{name}.npy", np.ascontiguousarray(array))

    try:
        return cached_array_folder(root, key, write, files=files)
    except Exception as exc:  # as cached_index: an unwritable cache must not fail the run
        if not built:
            raise
        log.warning("%s: could not cache the index (%s); the next run will scan the data again", root, exc)
        return built
