"""A flat file of arrays, appended once and read back by windows with explicit reads: a disk cache of decoded
pixels whose reads cost their own bytes and leave nothing resident in the process.

Why not ``numpy.memmap``: every page a memory map touches stays in the process's resident set (``ru_maxrss``
counts it) until the kernel needs the memory, so a loader worker that reads its share of a terabyte cache grows
toward that share. ``os.preadv`` reads into a buffer the caller owns; the kernel's page cache still serves repeated
reads, but it is not the process's memory. Writes go through a buffered file, for the same reason.

An array is stored C-contiguous at an offset; :meth:`ArrayFile.read_window` reads rows ``[top, top + height)``
of every leading plane (one read per plane, the rows' full width) and slices the columns, so a ``[C, h, w]``
window of a ``[C, H, W]`` scene costs ``C`` reads of ``h * W`` values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

__all__ = ["ArrayFile", "ArrayFileWriter", "StoredArray"]


@dataclass(frozen=True)
class StoredArray:
    """Where :meth:`ArrayFileWriter.append` put an array: byte ``offset``, ``dtype`` (a NumPy name), ``shape``."""

    offset: int
    dtype: str
    shape: tuple[int, ...]


class ArrayFileWriter:
    """Appends arrays to ``path`` (created or truncated); refuses to grow past ``limit`` bytes, if given, with an
    ``OSError`` naming the file (a cache must not fill the disk the run writes its checkpoints to)."""

    def __init__(self, path: Path, limit: int | None = None) -> None:
        self.path, self.limit = Path(path), limit
        self._file = self.path.open("wb")
        self.size = 0

    def append(self, array: np.ndarray) -> StoredArray:
        """Write ``array`` (C order) at the end of the file; returns where it is."""
        array = np.ascontiguousarray(array)
        if self.limit is not None and self.size + array.nbytes > self.limit:
            raise OSError(
                f"{self.path}: the cache would grow past its limit of {self.limit / 1e9:.1f} GB "
                f"(the disk's free space at the start)"
            )
        ref = StoredArray(self.size, array.dtype.name, tuple(int(n) for n in array.shape))
        self._file.write(memoryview(array).cast("B"))
        self.size += array.nbytes
        return ref

    def close(self) -> None:
        """Flush and close; a flush that fails (a full disk) raises here, not later."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> ArrayFileWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self._file.close()


class ArrayFile:
    """Reads the arrays an :class:`ArrayFileWriter` wrote. The file is opened on first use in each process, so an
    instance can be handed to forked or spawned DataLoader workers."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "_fd": None, "_pid": -1}

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a worker opens its own descriptor
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def _read_into(self, buffer: np.ndarray, offset: int) -> None:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):  # a read may return fewer bytes than asked (signals, network filesystems)
            got = os.preadv(self._handle(), [view[done:]], offset + done)
            if got == 0:
                raise OSError(f"{self.path}: ends before byte {offset + len(view)}; the cache is truncated")
            done += got

    def read(self, ref: StoredArray) -> np.ndarray:
        """The whole array."""
        out = np.empty(ref.shape, dtype=ref.dtype)
        self._read_into(out, ref.offset)
        return out

    def read_window(self, ref: StoredArray, top: int, left: int, height: int, width: int) -> np.ndarray:
        """``array[..., top : top + height, left : left + width]`` of a stored array of two or more dimensions."""
        *planes, rows, cols = ref.shape
        if not (top >= 0 and left >= 0 and top + height <= rows and left + width <= cols):
            raise ValueError(f"window ({top}, {left}, {height}, {width}) outside a {rows} x {cols} array")
        dtype = np.dtype(ref.dtype)
        count = int(np.prod(planes, dtype=np.int64))
        band = np.empty((count, height, cols), dtype=dtype)
        plane_bytes, row_bytes = rows * cols * dtype.itemsize, cols * dtype.itemsize
        for p in range(count):  # one read per plane: its rows at full width
            self._read_into(band[p], ref.offset + p * plane_bytes + top * row_bytes)
        return band[:, :, left : left + width].reshape(*planes, height, width)

    def close(self) -> None:
        """Close this process's descriptor (the next read opens it again)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
