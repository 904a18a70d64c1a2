"""Reader for the IDX file format used by MNIST and Fashion-MNIST.

Layout: a 4-byte magic number ``00 00 TT DD`` (``TT`` = element type code,
``DD`` = number of dimensions), then ``DD`` big-endian ``uint32`` sizes, then the
elements in C order, big-endian. Files may be gzip-compressed (detected from the
content, not the file name).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "parse_idx", "read_maybe_gzip"]

# IDX type code -> big-endian numpy dtype
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_maybe_gzip(path: str | os.PathLike) -> bytes:
    """Return the content of ``path``, decompressing it if it is gzip data.

    Raises:
        ValueError: if the file looks like gzip but is truncated or corrupt.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip file ({exc})") from exc
    return raw


def parse_idx(data: bytes, where: str = "<bytes>") -> np.ndarray:
    """Parse uncompressed IDX ``data`` into a numpy array (native byte order).

    Raises:
        ValueError: on a bad magic number, unknown type code, or a payload whose
            length does not match the header (truncated or trailing bytes).
    """
    if len(data) < 4:
        raise ValueError(f"{where}: not an IDX file (only {len(data)} bytes, header needs 4)")
    zero1, zero2, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0:
        raise ValueError(
            f"{where}: not an IDX file (bad magic number 0x{data[:4].hex()}, "
            "expected 0x0000TTDD)"
        )
    if type_code not in _IDX_TYPES:
        raise ValueError(f"{where}: unknown IDX element type code 0x{type_code:02x}")
    if ndim == 0:
        raise ValueError(f"{where}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{where}: truncated IDX header ({len(data)} bytes, need {header_len} "
            f"for {ndim} dimensions)"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _IDX_TYPES[type_code]
    if math.prod(max(d, 1) for d in dims) * dtype.itemsize >= 2**62:  # Python ints: no overflow
        raise ValueError(f"{where}: corrupt IDX header: shape {dims} is impossibly large")
    expected = math.prod(dims) * dtype.itemsize
    got = len(data) - header_len
    if got < expected:
        raise ValueError(
            f"{where}: truncated IDX file: header declares shape {dims} "
            f"({expected} bytes of data) but only {got} bytes follow"
        )
    if got > expected:
        raise ValueError(
            f"{where}: corrupt IDX file: {got - expected} unexpected trailing bytes "
            f"after data of shape {dims}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header_len)
    return arr.reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is corrupt or truncated (message names the file).
    """
    return parse_idx(read_maybe_gzip(path), where=str(path))
