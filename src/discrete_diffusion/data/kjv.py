"""The King James Bible (registry name ``"kjv"``), character level or BPE tokens.

The Debian package ``bible-kjv`` provides the ``bible`` program; the text is
``bible -f off Gen1:1-Rev22:21 </dev/null`` with the stray first line (the program echoes a verse that
is not Genesis 1:1, e.g. ``Obad1:1 ...``, before the requested range) and the leading verse references
(``Ge1:1 ``, ``Rev22:21 ``) removed: one verse per line, lines joined by ``"\\n"`` and ending with one.
That is 31,102 verses, 4,137,850 characters and 63 distinct symbols. The extracted text is cached
(atomic write) as ``$DDIFF_DATA_DIR/kjv.txt`` or ``~/.cache/discrete-diffusion/kjv.txt`` so ``bible``
runs once. Splits and vocabulary follow :mod:`~discrete_diffusion.data.text`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .base import DiscreteDataset
from .fashion_mnist import DatasetUnavailableError
from .text import dataset_from_text, read_utf8

__all__ = ["KJV_DEBIAN_PACKAGE", "kjv_cache_path", "extract_kjv_verses", "kjv_text", "load_kjv"]

KJV_DEBIAN_PACKAGE = "bible-kjv"

_VERSE_REF = re.compile(r"^(?:[1-3]?[A-Z][A-Za-z]*)(\d+):(\d+) ")


def kjv_cache_path() -> Path:
    """``$DDIFF_DATA_DIR/kjv.txt`` when ``DDIFF_DATA_DIR`` is set, else ``~/.cache/discrete-diffusion/kjv.txt``."""
    root = os.environ.get("DDIFF_DATA_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "discrete-diffusion"
    return base / "kjv.txt"


def extract_kjv_verses(raw: str) -> str:
    """Verse text from the output of ``bible -f off Gen1:1-Rev22:21``.

    Lines before the first ``Ge1:1`` line (the stray echoed verse) are dropped, the reference prefix
    (``Ge1:1 ``) of every line is removed, and the verses are joined with ``"\\n"`` (one per line, with a
    final newline). A line without a reference is an error (the output format changed).
    """
    lines = raw.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith("Ge1:1 ")), None)
    if start is None:
        raise ValueError("unexpected output of `bible`: no line starts with the reference 'Ge1:1 '")
    verses = []
    for i, line in enumerate(lines[start:], start):
        line = line.rstrip("\r")
        if not line:
            continue
        m = _VERSE_REF.match(line)
        if m is None:
            raise ValueError(f"unexpected output of `bible` at line {i + 1}: no verse reference in {line[:60]!r}")
        verses.append(line[m.end():])
    return "\n".join(verses) + "\n"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def kjv_text(cache: bool = True) -> str:
    """The KJV verse text (see :func:`extract_kjv_verses`), from the cache or by running ``bible`` once.

    Raises:
        DatasetUnavailableError: no cached copy and the ``bible`` program is missing (names the apt
            package ``bible-kjv``) or fails.
    """
    path = kjv_cache_path()
    if cache and path.is_file():
        return read_utf8(path)
    exe = shutil.which("bible")
    if exe is None:
        raise DatasetUnavailableError(
            f"dataset 'kjv' needs the `bible` program from the Debian/Ubuntu package {KJV_DEBIAN_PACKAGE!r} "
            f"(apt-get install {KJV_DEBIAN_PACKAGE}); no cached text at {path}"
        )
    try:
        proc = subprocess.run([exe, "-f", "off", "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL,
                              capture_output=True, check=False, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DatasetUnavailableError(f"running `bible` (package {KJV_DEBIAN_PACKAGE}) failed: {exc}") from exc
    if proc.returncode != 0:
        raise DatasetUnavailableError(
            f"`bible -f off Gen1:1-Rev22:21` exited with status {proc.returncode}: "
            f"{proc.stderr.decode('utf-8', 'replace')[-500:]}"
        )
    text = extract_kjv_verses(proc.stdout.decode("utf-8"))
    if cache:
        _atomic_write_text(path, text)
    return text


def load_kjv(
    seq_len: int = 256,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_seed: int = 0,
    vocab: str | Sequence[str] | None = None,
    tokenizer: str = "char",
    vocab_size: int | None = None,
    tokenizer_json: str | None = None,
    normalize: str | None = None,
) -> DiscreteDataset:
    """The King James Bible at character level (registry name ``"kjv"``; about 4.1 MB, 63 symbols), or in
    byte-level BPE tokens with ``tokenizer="bpe"`` and ``vocab_size`` (e.g. 4096).

    Split and vocabulary rules as in :func:`load_text_file`; the last 5% of the Bible (the end of the New
    Testament) is the test block. Needs the Debian package ``bible-kjv`` the first time (then cached).
    ``normalize="text8"`` gives "KJV-27" (27 symbols, 4,013,873 characters;
    :mod:`~discrete_diffusion.data.normalize`).
    """
    text = kjv_text()
    return dataset_from_text(
        text, seq_len=seq_len, val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed,
        vocab=vocab, name="kjv", where="kjv", tokenizer=tokenizer, vocab_size=vocab_size,
        tokenizer_json=tokenizer_json, normalize=normalize,
        metadata={"source": f"Debian package {KJV_DEBIAN_PACKAGE}: bible -f off Gen1:1-Rev22:21",
                  "cache": str(kjv_cache_path()),
                  **({"label": "KJV-27"} if normalize == "text8" and tokenizer == "char" else {})},
    )
