"""Parsing untrusted JSON with bounds: size, nesting depth and number length (issue 19 items 6 and 7).

Python's ``json`` recurses once per nesting level (a deeply nested document raises ``RecursionError``) and turns
an integer of more than 4300 digits into a ``ValueError`` that names no file. :func:`loads_bounded` checks the
three bounds before or while parsing and raises one ``ValueError`` naming ``where``:

- size: at most ``max_bytes`` bytes (UTF-8);
- depth: the brackets outside strings are counted (strings removed first, so a ``"["`` token is no bracket) and
  a document nested deeper than ``max_depth`` is refused before ``json`` sees it;
- numbers: every integer and float literal of more than ``max_number_chars`` characters is refused (through
  ``parse_int`` / ``parse_float``, so no digit-limit conversion is ever attempted).

The run directory's reader of files (regular file only, no link, no FIFO) is
:func:`discrete_diffusion.runs.json_reader.read_run_json`, built on this.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["loads_bounded", "json_depth", "MAX_JSON_DEPTH", "MAX_NUMBER_CHARS", "MAX_JSON_BYTES"]

#: Default deepest nesting accepted (ddiff's own files nest at most ~6 levels).
MAX_JSON_DEPTH = 64
#: Default longest number literal (a float's repr is at most 24 characters, a uint64 20 digits).
MAX_NUMBER_CHARS = 64
#: Default largest document.
MAX_JSON_BYTES = 64 << 20

# A JSON string literal: quotes, then runs of plain characters or escapes (the unrolled form: no backtracking).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(i for i in range(128) if chr(i) not in "[]{}")


def _outside_strings(text: str) -> str:
    """``text`` with every string literal replaced by ``""``."""
    return _STRING.sub('""', text)


def json_depth(text: str, limit: int, *, strings_removed: bool = False) -> int:
    """The deepest bracket nesting of ``text`` outside string literals; counting stops once it passes ``limit``
    (then ``limit + 1`` is returned). The brackets alone are kept and every innermost pair removed per pass, so
    the number of passes that empty them is the depth (each pass one ``bytes.replace``: linear time in C)."""
    rest = text if strings_removed else _outside_strings(text)
    brackets = rest.encode("ascii", "ignore").translate(None, _NOT_BRACKETS).replace(b"{", b"[").replace(b"}", b"]")
    for depth in range(limit + 2):
        if not brackets:
            return depth
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):  # unbalanced: not JSON, json.loads says so
            return depth
        brackets = shorter
    return limit + 1


def loads_bounded(text: str | bytes | bytearray, where: str, *, max_bytes: int = MAX_JSON_BYTES,
                  max_depth: int = MAX_JSON_DEPTH, max_number_chars: int = MAX_NUMBER_CHARS) -> Any:
    """``json.loads(text)`` within the bounds of the module docstring; ``ValueError`` (one line naming ``where``)
    for a document too large, not UTF-8, not JSON, nested deeper than ``max_depth`` or holding a number literal
    longer than ``max_number_chars``. NaN and +-Infinity are accepted (ddiff writes them); callers check values."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) > max_bytes:
            raise ValueError(f"{where}: over {max_bytes} bytes")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{where}: not UTF-8 (byte offset {err.start})") from None
    elif len(text) > max_bytes:
        raise ValueError(f"{where}: over {max_bytes} bytes")
    rest = _outside_strings(text)
    if json_depth(rest, max_depth, strings_removed=True) > max_depth:
        raise ValueError(f"{where}: JSON nested deeper than {max_depth} levels")
    long_number = re.search(r"[-+0-9.eE]{%d,}" % (max_number_chars + 1), rest)
    if long_number:
        raise ValueError(f"{where}: a number of {long_number.end() - long_number.start()}+ characters (at most "
                         f"{max_number_chars})")
    try:
        return json.loads(text)
    except RecursionError:  # the depth check above makes this unreachable; kept as a backstop
        raise ValueError(f"{where}: JSON nested too deeply") from None
    except ValueError as err:  # JSONDecodeError; a digit-limit error cannot reach here after the length check
        raise ValueError(f"{where}: not valid JSON ({str(err).splitlines()[0][:120]})") from None
