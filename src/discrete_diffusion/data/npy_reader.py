"""Bounded readers of untrusted ``.npy`` / ``.npz`` files (no pickle, no allocation a header can inflate).

Format: NumPy's NEP 1 ``.npy`` layout (magic ``\\x93NUMPY``, version, a Python-literal header with
``descr``, ``fortran_order`` and ``shape``, then the raw payload); an ``.npz`` is a zip archive of
``.npy`` members. Unlike :func:`numpy.load`, every size is checked before memory is allocated for it:

* ``.npy``: the payload the header declares, ``prod(shape) * itemsize`` bytes, must equal the bytes that
  follow the header, and the states it becomes (8 bytes each) must fit in ``max_bytes``
  (:mod:`~discrete_diffusion.data.limits`);
* ``.npz``: each wanted member's ``ZipInfo.file_size`` (its inflated size, from the central directory)
  must fit in ``max_bytes`` and agree with the member's own ``.npy`` header, which is read first (a few
  hundred bytes); a member is inflated only after these checks, and never past its declared size.

Only numeric dtypes (bool, integers, floats) are accepted; an object dtype (pickled data) is refused
without ever suggesting to load it unsafely.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npformat

from .limits import check_raw, check_states

__all__ = ["NpyHeader", "read_npy_header", "parse_npy", "NpzReader"]

_NUMERIC_KINDS = "biuf"
#: At most this many members in an ``.npz`` (the loader uses at most six).
MAX_NPZ_MEMBERS = 64


class NpyHeader:
    """A parsed ``.npy`` header: ``shape``, ``dtype``, ``fortran`` order, ``offset`` of the payload, ``payload``
    bytes (``prod(shape) * itemsize``)."""

    __slots__ = ("shape", "dtype", "fortran", "offset", "payload")

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, fortran: bool, offset: int) -> None:
        self.shape, self.dtype, self.fortran, self.offset = shape, dtype, fortran, offset
        self.payload = math.prod(shape) * dtype.itemsize

    @property
    def count(self) -> int:
        """Number of values, ``prod(shape)``."""
        return math.prod(self.shape)


def read_npy_header(fp: BinaryIO, where: str, what: str = "data") -> NpyHeader:
    """Read the magic and header of a ``.npy`` stream positioned at its start.

    Raises:
        ValueError: not a ``.npy`` stream, an unsupported version, a malformed header, a non-numeric dtype.
    """
    start = fp.read(6)
    if start != npformat.MAGIC_PREFIX:
        raise ValueError(f"{where}: not a NumPy .npy array (it does not start with the .npy magic "
                         f"b'\\x93NUMPY', got {start[:6]!r})")
    version = tuple(fp.read(2))
    try:
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy format version {version}; expected 1.0 or 2.0")
    except ValueError as exc:
        raise ValueError(f"{where}: malformed .npy header ({_first_line(exc)})") from None
    if dtype.hasobject or dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"{what} in {where} has dtype {dtype}; expected integer states (or integral floats); "
                         f"object (pickled) and structured arrays are not accepted")
    shape = tuple(int(s) for s in shape)
    # numpy cannot even describe an empty array whose other axes overflow (e.g. (0, 10**12, 10**12))
    if any(s < 0 for s in shape) or math.prod(s for s in shape if s) * dtype.itemsize >= 2**63:
        raise ValueError(f"{where}: corrupt .npy header: shape {shape} of dtype {dtype} is impossibly large")
    return NpyHeader(shape, dtype, bool(fortran), fp.tell())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_sizes(header: NpyHeader, present: int, max_bytes: int, where: str) -> None:
    shape_text = f"shape {header.shape} of dtype {header.dtype}"
    check_raw(header.payload, max_bytes, f"{where}: the .npy header's {shape_text}")
    check_states(header.count, max_bytes, f"{where}: the .npy header's {shape_text}")
    if present < header.payload:
        raise ValueError(f"{where}: truncated .npy: the header declares {shape_text} ({header.payload} bytes of "
                         f"data) but only {present} bytes follow")
    if present > header.payload:
        raise ValueError(f"{where}: corrupt .npy: the header declares {shape_text} ({header.payload} bytes of "
                         f"data) but {present} bytes follow")


def _array(buf: bytearray | memoryview, header: NpyHeader) -> np.ndarray:
    flat = np.frombuffer(buf, dtype=header.dtype, count=header.count, offset=0)
    return flat.reshape(header.shape, order="F" if header.fortran else "C")


def parse_npy(raw: bytearray, max_bytes: int, where: str) -> np.ndarray:
    """The array of a whole ``.npy`` file held in ``raw`` (a view on it, no copy).

    Raises:
        ValueError: as :func:`read_npy_header`, or a payload that disagrees with the header or is over
            ``max_bytes``.
    """
    fp = io.BytesIO(raw)
    header = read_npy_header(fp, where)
    _check_sizes(header, len(raw) - header.offset, max_bytes, where)
    return _array(memoryview(raw)[header.offset:], header)


class NpzReader:
    """The ``.npy`` members of an ``.npz`` archive held in memory, read one by one with bounded sizes.

    ``keys`` are the member names without ``.npy``; the total inflated size of the members read must stay
    within ``max_bytes`` (raw) and their states within ``max_bytes`` (int64).
    """

    def __init__(self, raw: bytes | bytearray, max_bytes: int, where: str) -> None:
        self.where, self.max_bytes = where, max_bytes
        self.raw_used = 0
        self.states_used = 0
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(raw))
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
            raise ValueError(f"{where}: not a valid .npz (zip) archive ({_first_line(exc)})") from None
        if len(infos) > MAX_NPZ_MEMBERS:
            raise ValueError(f"{where}: the .npz archive has {len(infos)} members; at most {MAX_NPZ_MEMBERS} are "
                             f"accepted (the loader uses train, val, test and their labels)")
        self.infos: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if not info.filename.endswith(".npy") or info.is_dir():
                raise ValueError(f"{where}: .npz member {info.filename!r} is not a .npy array")
            self.infos[info.filename[:-4]] = info

    @property
    def keys(self) -> list[str]:
        return list(self.infos)

    def read(self, key: str) -> np.ndarray:
        """Inflate and return member ``key`` after checking its declared sizes against the budget."""
        info = self.infos[key]
        where = f"{self.where} member '{key}'"
        self.raw_used += info.file_size
        before = " with the members read before it" if self.raw_used > info.file_size else ""
        check_raw(self.raw_used, self.max_bytes, f"{where} (inflated{before})")
        try:
            with self.zip.open(info) as fp:
                header = read_npy_header(fp, where)
                present = info.file_size - header.offset
                _check_sizes(header, present, self.max_bytes, where)
                self.states_used += header.count
                check_states(self.states_used, self.max_bytes, f"{where} (with the members read before it)")
                buf = bytearray(header.payload)
                view, got = memoryview(buf), 0
                while got < header.payload:
                    n = fp.readinto(view[got:])
                    if not n:
                        raise ValueError(f"the member ends after {got} of {header.payload} bytes of data")
                    got += n
                fp.read(1)  # reach the end: zipfile checks the CRC there
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            raise ValueError(f"{where}: corrupt .npz member ({_first_line(exc)})") from None
        except ValueError as exc:
            if where in str(exc):
                raise
            raise ValueError(f"{where}: corrupt .npz member ({_first_line(exc)})") from None
        return _array(buf, header)
