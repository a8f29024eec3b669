"""A flat file of arrays, appended once and read back by windows: a disk cache of decoded pixels whose reads cost
their own bytes and leave nothing resident in the process.

Why not one ``numpy.memmap`` of the file: every page a long-lived memory map touches stays in the process's
resident set (``ru_maxrss`` counts it) until the kernel needs the memory, so a loader worker that reads its share
of a terabyte cache grows toward that share. :meth:`ArrayFile.read_window` maps only the span of one window, copies
the window out of the page cache in one strided copy, and unmaps it: nothing stays resident, and a window costs one
copy. It replaced an explicit ``os.preadv`` of the rows into a buffer followed by a copy of the columns, two copies:
an SSL4EO loader worker went from about 800 to about 1,100 items/s (docs/scaling.md). Whole arrays
(:meth:`ArrayFile.read`) are still read with ``preadv``. Writes go through a buffered file.

:class:`NpyWriter` streams an ``.npy`` file whose length is known only at the end (a graph's neighbour lists
parsed a block at a time). :class:`NpyRows` reads scattered rows of an ``.npy`` file with ``preadv``, for loaders
that gather rows of large arrays batch after batch (a memory map's fault-around would map most of the file within
one batch), and :func:`release_pages` drops from the process the pages it touched of the small arrays it keeps
mapped (``numpy.load(mmap_mode=...)``).

An array is stored C-contiguous at an offset. :meth:`ArrayFile.will_need_window` and :func:`will_need` (for
loaders that map their files for longer, as MONAI's cached volumes come back) announce a batch's reads to the
kernel before the first, so that the reads missing the page cache go to the disk together.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

__all__ = ["ArrayFile", "ArrayFileWriter", "NpyRows", "NpyWriter", "StoredArray", "release_pages", "will_need"]

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; only read by type checkers here

    import numpy.typing as npt
    import torch


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

    def __enter__(self) -> Self:
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
        self._size: int | None = None

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "_fd": None, "_pid": -1, "_size": None}

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a worker opens its own descriptor
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, ref: StoredArray) -> np.ndarray:
        """The whole array, read with ``os.preadv`` into a new array."""
        out = np.empty(ref.shape, dtype=ref.dtype)
        self._read_into(memoryview(out).cast("B"), ref.offset)
        return out

    def _read_into(self, buffer: memoryview, offset: int) -> None:
        end = offset + len(buffer)
        while buffer:  # a read may stop short (signals, network filesystems)
            got = os.preadv(self._handle(), [buffer], offset)
            if got == 0:
                raise OSError(f"{self.path}: ends before byte {end}; the file is truncated")
            buffer, offset = buffer[got:], offset + got

    def read_window(
        self, ref: StoredArray, top: int, left: int, height: int, width: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """``array[..., top : top + height, left : left + width]`` of a stored array of two or more dimensions.

        With ``out`` (shape ``[..., height, width]``, any dtype the values cast to), the window is written there
        and ``out`` returned: a loader fills its batch in place, with no array per item. The window's span of the
        file is mapped, copied from the page cache into ``out`` in one strided copy, and unmapped at once (see
        the module docstring)."""
        *planes, rows, cols = ref.shape
        if not (top >= 0 and left >= 0 and top + height <= rows and left + width <= cols):
            raise ValueError(f"window ({top}, {left}, {height}, {width}) outside a {rows} x {cols} array")
        dtype = np.dtype(ref.dtype)
        if out is None:
            out = np.empty((*planes, height, width), dtype=dtype)
        count, item = int(np.prod(planes, dtype=np.int64)), dtype.itemsize
        if not (count and height and width):
            return out
        plane_bytes, row_bytes = rows * cols * item, cols * item
        self._check_extent(ref.offset + count * plane_bytes)
        first = ref.offset + top * row_bytes + left * item
        end = first + (count - 1) * plane_bytes + (height - 1) * row_bytes + width * item  # past the last value
        start = first - first % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(self._handle(), end - start, access=mmap.ACCESS_READ, offset=start)
        try:
            window = np.ndarray((count, height, width), dtype, mapped, first - start, (plane_bytes, row_bytes, item))
            try:
                np.copyto(out, window.reshape(*planes, height, width), casting="unsafe")
            finally:
                del window  # the map closes only once no array views it
        finally:
            mapped.close()
        return out

    def _check_extent(self, end: int) -> None:
        """A stored array ending at byte ``end`` is in the file: reading a map past a file's end would kill the
        process (SIGBUS), where a read raises. The size is taken once per process (the file is written once)."""
        if self._size is None or self._pid != os.getpid():
            self._size = os.fstat(self._handle()).st_size
        if end > self._size:
            raise OSError(f"{self.path}: ends before byte {end}; the cache is truncated")

    def will_need_window(self, ref: StoredArray, top: int, height: int) -> None:
        """Ask the kernel to start reading the bytes :meth:`read_window` will read for rows ``[top, top + height)``
        (``POSIX_FADV_WILLNEED``) and return at once. A loader that announces a batch's windows before reading
        any has the kernel fetch them together, not one page fault waiting on the disk at a time."""
        if not hasattr(os, "posix_fadvise"):
            return
        *planes, rows, cols = ref.shape
        count, row_bytes = int(np.prod(planes, dtype=np.int64)), cols * np.dtype(ref.dtype).itemsize
        first, window_bytes, plane_bytes = ref.offset + top * row_bytes, height * row_bytes, rows * row_bytes
        if count > 1 and plane_bytes - window_bytes <= window_bytes // 2:  # planes close: one span across them
            spans = [(first, (count - 1) * plane_bytes + window_bytes)]
        else:
            spans = [(first + p * plane_bytes, window_bytes) for p in range(count)]
        for start, length in spans:
            for offset, size in _advice_pieces(start, start + length):
                os.posix_fadvise(self._handle(), offset, size, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        """Close this process's descriptor (the next read opens it again)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


class NpyRows(ArrayFile):
    """Reads rows of an ``.npy`` file with ``os.preadv``, one read per run of consecutive rows: the rows are copied
    out of the page cache and nothing is mapped. For loaders that gather scattered rows of a file larger than they
    should hold, batch after batch (a graph store's features and neighbour lists): under a memory map each fault
    maps up to 64 kB of cached neighbours too (the kernel's fault-around, which ``MADV_RANDOM`` does not turn off),
    so a batch of 32,000 random rows of a 2 GB matrix mapped 1.9 GB into the process, and took longer (57-110 ms
    against 43 ms, 2026-12-07)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        with self.path.open("rb") as f:
            fmt = np.lib.format
            read_header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
        if fortran:
            raise ValueError(f"{self.path}: a Fortran-ordered array; rows are read from C-ordered ones")
        self.shape, self.dtype, self.offset = tuple(shape), np.dtype(dtype), offset
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, **super().__getstate__()}

    def __len__(self) -> int:
        return self.shape[0]

    def runs(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Rows ``starts[i] : starts[i] + lengths[i]`` for each ``i``, concatenated in that order."""
        starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
        if len(starts) and (int(starts.min()) < 0 or int((starts + lengths).max()) > self.shape[0]):
            raise IndexError(f"{self.path}: rows outside 0..{self.shape[0] - 1}")
        out = np.empty((int(lengths.sum()), *self.shape[1:]), dtype=self.dtype)
        keep = lengths > 0
        sizes = lengths[keep] * self._row_bytes
        ends, offsets = np.cumsum(sizes), self.offset + starts[keep] * self._row_bytes
        buffer, fd = memoryview(out).cast("B"), self._handle()
        # one system call per run, the loop kept bare: a batch of a sampled subgraph makes tens of thousands
        for offset, size, end in zip(offsets.tolist(), sizes.tolist(), ends.tolist(), strict=True):
            piece = buffer[end - size : end]
            if os.preadv(fd, [piece], offset) != size:  # a short read (a signal, a network filesystem): finish it
                self._read_into(piece, offset)
        return out

    def take(self, rows: np.ndarray, gap_bytes: int = 8192) -> np.ndarray:
        """``array[rows]``, any order and repeats. The distinct rows are read in order, one read per span of rows
        no further apart than ``gap_bytes``: a system call costs about what copying 10 kB does, so reading the
        few rows between two wanted ones is cheaper than a second call."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        wanted, inverse = np.unique(rows, return_inverse=True)
        breaks = np.flatnonzero(np.diff(wanted) > max(1, gap_bytes // max(self._row_bytes, 1))) + 1
        first, last = np.concatenate([[0], breaks]), np.concatenate([breaks, [len(wanted)]]) - 1
        starts, lengths = wanted[first], wanted[last] - wanted[first] + 1
        spans = self.runs(starts, lengths)
        span = np.repeat(np.arange(len(first)), last - first + 1)  # the span each wanted row is in
        return spans[((np.cumsum(lengths) - lengths)[span] + wanted - starts[span])[inverse.ravel()]]


_MADV_WILLNEED = 3  # Linux
# Linux reads ahead at most max(read_ahead_kb, max_sectors_kb) of one advice (128 kB by default): longer spans
# are advised in pieces, or their tail would be read on demand after all
_ADVICE_BYTES = 128 * 1024
_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def _advice_pieces(start: int, end: int) -> list[tuple[int, int]]:
    """``(offset, length)`` pieces of at most ``_ADVICE_BYTES`` covering ``[start, end)``."""
    return [(offset, min(_ADVICE_BYTES, end - offset)) for offset in range(start, end, _ADVICE_BYTES)]


def will_need(view: torch.Tensor) -> None:
    """Ask the kernel to start reading the pages under ``view``, a (strided) view of a memory-mapped tensor, and
    return at once (``madvise(MADV_WILLNEED)`` on each run of its two innermost dimensions; Linux only, else a
    no-op). A loader that announces every crop of a batch before copying any has the kernel fetch them all
    together, instead of one page fault waiting on the disk at a time. Harmless on memory that is not a file's."""
    if _libc is None or view.numel() == 0 or view.device.type != "cpu":
        return
    size, stride, item = view.shape, view.stride(), view.element_size()
    while len(size) < 2:  # a row or a scalar: one run
        size, stride = (1, *size), (0, *stride)
    span = ((size[-2] - 1) * stride[-2] + (size[-1] - 1) * stride[-1] + 1) * item
    lead = np.zeros(1, dtype=np.int64)
    for n, st in zip(size[:-2], stride[:-2], strict=True):
        lead = (lead[:, None] + np.arange(n, dtype=np.int64) * st).ravel()  # element offsets of the runs' starts
    page = mmap.PAGESIZE
    for offset in (lead * item + view.data_ptr()).tolist():
        for piece, length in _advice_pieces(offset - offset % page, offset + span):  # madvise wants page starts
            _libc.madvise(ctypes.c_void_p(piece), ctypes.c_size_t(length), _MADV_WILLNEED)


_NPY_HEADER = 128  # bytes reserved for an .npy header (magic, length, dict): room for any shape of a few dimensions


class NpyWriter(ArrayFileWriter):
    """Writes an ``.npy`` file a block of rows at a time, in bounded memory, when the number of rows is known only
    at the end (``numpy.lib.format.open_memmap`` needs the shape first, and its written pages count in the RSS).
    The header is written last, into room kept at the start; :func:`numpy.load` reads the file as any other."""

    def __init__(self, path: Path, dtype: npt.DTypeLike, row_shape: tuple[int, ...] = ()) -> None:
        super().__init__(path)
        self.dtype, self.row_shape, self.rows = np.dtype(dtype), tuple(row_shape), 0
        super().append(np.zeros(_NPY_HEADER, np.uint8))

    def append(self, block: np.ndarray) -> StoredArray:
        """Append rows (shape ``[k, *row_shape]``), cast to the file's dtype."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {block.shape[1:]}, expected {self.row_shape}")
        self.rows += len(block)
        return super().append(block)

    def close(self, shape: tuple[int, ...] | None = None) -> None:
        """Write the header, flush and close. ``shape`` reshapes what was written (the same number of values):
        rows appended as one flat run can be stored as ``[2, E]``. Closing again does nothing."""
        if self._file.closed:
            return
        count = self.rows * int(np.prod(self.row_shape, dtype=np.int64))
        shape = (self.rows, *self.row_shape) if shape is None else tuple(shape)
        if int(np.prod(shape, dtype=np.int64)) != count:
            raise ValueError(f"{self.path}: {count} values written, cannot be stored as {shape}")
        header = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape})
        room = _NPY_HEADER - len(np.lib.format.magic(1, 0)) - 2  # the magic string, then a 2-byte length
        if len(header) + 1 > room:
            raise ValueError(f"{self.path}: an .npy header for shape {shape} does not fit {_NPY_HEADER} bytes")
        self._file.seek(0)
        self._file.write(np.lib.format.magic(1, 0) + room.to_bytes(2, "little") + f"{header:<{room - 1}}\n".encode())
        super().close()


def release_pages(arrays: list[np.ndarray]) -> None:
    """Drop from this process the pages it touched of each memory-mapped array (``madvise(MADV_DONTNEED)`` on
    the array's ``mmap``; arrays that are not mapped are left alone). The pages stay in the page cache, so the
    next read of them costs a minor fault, not a disk read. Only for maps that are read, never written: a private
    (``mmap_mode="c"``) map loses what was written into it."""
    for array in arrays:
        base = array
        while base is not None and not isinstance(base, mmap.mmap):
            base = getattr(base, "base", None)
        if base is not None and hasattr(mmap, "MADV_DONTNEED"):
            base.madvise(mmap.MADV_DONTNEED)
