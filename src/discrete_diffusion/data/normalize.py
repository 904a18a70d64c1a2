"""Text normalisation applied before the split (config ``data.normalize``): ``text8`` reduces any text to 27 symbols.

Reference: Matt Mahoney's ``text8`` (the first 10^8 characters of an English Wikipedia dump, cleaned by his
``wikifil.pl``: lowercase letters a-z and single spaces), the character-level benchmark of D3PM (Austin et al.,
2021), SEDD (Lou et al., 2024) and MD4 (Shi et al., 2024, arXiv 2406.04329, Table 2).

``text8`` here is the rule, not Mahoney's script (which also spells digits out as words): the ASCII capitals
A-Z become a-z, the letters a-z are kept, and every maximal run of any other characters (spaces, newlines,
punctuation, digits, non-ASCII letters) becomes one space. The result has at most 27 distinct symbols,
:data:`TEXT8_VOCAB` (space first, then a-z), which is the vocabulary of a normalised dataset even when a split
lacks some letter. The rule is locale-free and idempotent: ``normalize_text(normalize_text(s)) == normalize_text(s)``.
"""

from __future__ import annotations

import re

__all__ = ["NORMALIZATIONS", "TEXT8_VOCAB", "normalize_text", "check_normalize"]

#: Accepted values of ``data.normalize`` (``None`` means ``"none"``: the text is used as read).
NORMALIZATIONS = ("none", "text8")

#: The 27 symbols of a ``text8``-normalised text, in vocabulary order (index 0 is the space).
TEXT8_VOCAB = " abcdefghijklmnopqrstuvwxyz"

_NOT_LETTER = re.compile(r"[^a-z]+")
_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def check_normalize(normalize: str | None) -> str:
    """``normalize`` as one of :data:`NORMALIZATIONS` (``None`` -> ``"none"``); anything else is a ValueError."""
    value = "none" if normalize is None else normalize
    if value not in NORMALIZATIONS:
        raise ValueError(f"data.normalize must be one of {', '.join(NORMALIZATIONS)} (or null), got {normalize!r}")
    return value


def normalize_text(text: str, normalize: str | None = "text8") -> str:
    """``text`` under the rule ``normalize`` (``"none"`` / ``None``: unchanged; ``"text8"``: see the module doc).

    Example: ``normalize_text("In the Beginning, God... (Gen 1:1)\\n")`` is ``"in the beginning god gen "``.
    """
    if check_normalize(normalize) == "none":
        return text
    return _NOT_LETTER.sub(" ", text.translate(_UPPER))
