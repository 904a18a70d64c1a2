"""The data manifest of a run directory (``data.json``): which data a model was trained on.

``ddiff train`` writes ``RUN_DIR/data.json`` with the SHA-256 of every data file the config names
(``files``: ``path`` / ``val_path`` / ``test_path`` -> file and SHA-256, as the loaders record them in
``metadata["files"]``) and one SHA-256 over the loaded splits (``splits_sha256``: shapes, dtypes and
values of train, val and test), which also covers built-in datasets that have no user file.
Text read with a normalisation or a format other than the plain file (``data.normalize=text8``,
``data.format=lines|documents|text8``) also records ``text``: the rule, the format, the packing and the EOS id; a
manifest without that key (every run written before it existed) means plain, unnormalised text.

``ddiff evaluate`` and ``ddiff sample`` (through :func:`~discrete_diffusion.pipeline.load_run`) load the
data again and call :func:`check_data_manifest`: a file whose checksum differs is refused with a one-line
:class:`DataChangedError` naming the file and both checksums, unless ``allow_change`` (the flag
``--allow-data-change``), which emits a :class:`DataChangedWarning` instead. A run written before the
manifest existed has no ``data.json``: it keeps working, with a warning that nothing can be checked.

A BPE-tokenised text run (``data.tokenizer=bpe``) also keeps its trained tokenizer, ``RUN_DIR/tokenizer.json``,
whose SHA-256 is ``files["tokenizer"]`` here; :func:`~discrete_diffusion.data.tokenizer.run_tokenizer_json`
reads it back only when that checksum matches.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from ..data.base import DiscreteDataset, sha256_of_arrays
from .atomic_io import atomic_write_text
from .json_reader import read_run_json

__all__ = ["MANIFEST_NAME", "DataChangedError", "DataChangedWarning", "data_manifest", "write_data_manifest",
           "check_data_manifest", "text_record"]

#: File name of the manifest inside a run directory.
MANIFEST_NAME = "data.json"
_FORMAT = 1
_MAX_MANIFEST_BYTES = 1 << 20


class DataChangedError(ValueError):
    """The data differ from the data recorded at training time."""


class DataChangedWarning(UserWarning):
    """The data differ from the recorded data (accepted with ``--allow-data-change``), or were not recorded."""


def data_manifest(dataset: DiscreteDataset) -> dict[str, Any]:
    """The manifest of ``dataset``: ``{"format", "dataset", "files", "splits_sha256", "sizes", "num_states"}``."""
    files = dataset.metadata.get("files") or {}
    record = {
        "format": _FORMAT,
        "dataset": dataset.name,
        "files": {key: {"file": str(v["file"]), "sha256": str(v["sha256"])} for key, v in files.items()},
        "splits_sha256": sha256_of_arrays(dataset.train, dataset.val, dataset.test),
        "sizes": {split: int(dataset.split(split).shape[0]) for split in ("train", "val", "test")},
        "num_states": dataset.num_states,
    }
    text = text_record(dataset.metadata)
    if text != _PLAIN_TEXT:
        record["text"] = text
    return record


_PLAIN_TEXT = {"normalize": "none", "format": "plain"}


def text_record(metadata: dict[str, Any]) -> dict[str, Any]:
    """How a text dataset was read: ``{"normalize", "format"}`` plus ``packing`` / ``eos`` where they apply;
    ``{"normalize": "none", "format": "plain"}`` for plain text and for every other dataset."""
    record: dict[str, Any] = {"normalize": str(metadata.get("normalize") or "none"),
                              "format": str(metadata.get("text_format") or "plain")}
    if metadata.get("packing") is not None:
        record["packing"] = str(metadata["packing"])
    if metadata.get("eos") is not None:
        record["eos"] = int(metadata["eos"])
    return record


def write_data_manifest(run_dir: str | os.PathLike, dataset: DiscreteDataset) -> Path:
    """Write ``RUN_DIR/data.json`` atomically and without following links (runs/atomic_io.py); return its path."""
    path = Path(run_dir) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(data_manifest(dataset), indent=2) + "\n")
    return path


def _read_manifest(path: Path) -> dict[str, Any]:
    try:  # a regular file (no link, no FIFO), bounded in size, depth and number length
        record = read_run_json(path, _MAX_MANIFEST_BYTES, "data manifest")
    except FileNotFoundError:
        raise ValueError(f"{path}: the data manifest must be a regular file") from None
    files = record.get("files") if isinstance(record, dict) else None
    if (not isinstance(record, dict) or record.get("format") != _FORMAT or not isinstance(files, dict)
            or not isinstance(record.get("splits_sha256"), str)
            or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("file"), str)
                       for v in files.values())):
        raise ValueError(f"{path}: not a data manifest of format {_FORMAT} (expected keys format, files, "
                         f"splits_sha256)")
    return record


def check_data_manifest(run_dir: str | os.PathLike, dataset: DiscreteDataset, allow_change: bool = False) -> list[str]:
    """Compare ``dataset`` with ``RUN_DIR/data.json``; return the differences found (empty when equal).

    Raises:
        DataChangedError: a difference and not ``allow_change`` (one line: the file, both checksums).
        ValueError: a malformed manifest.

    Warns:
        DataChangedWarning: each difference when ``allow_change``; a run without a manifest.
    """
    path = Path(run_dir) / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        warnings.warn(f"{run_dir} records no data checksums (no {MANIFEST_NAME}; written before checksums were "
                      f"recorded): cannot check that the data are the ones the model was trained on",
                      DataChangedWarning, stacklevel=2)
        return []
    recorded = _read_manifest(path)
    now = data_manifest(dataset)
    problems = []
    for key in sorted(set(recorded["files"]) | set(now["files"])):
        old, new = recorded["files"].get(key), now["files"].get(key)
        if old is None:
            problems.append(f"data.{key} {new['file']} was not used in training (sha256 {new['sha256']})")
        elif new is None:
            problems.append(f"data.{key} {old['file']} (sha256 {old['sha256']}) was used in training but is not "
                            f"in the config now")
        elif old["sha256"] != new["sha256"]:
            moved = "" if old["file"] == new["file"] else f" (trained on {old['file']})"
            problems.append(f"data file {new['file']}{moved} changed since training: sha256 {old['sha256']} "
                            f"recorded, {new['sha256']} now")
    old_text, new_text = recorded.get("text", _PLAIN_TEXT), now.get("text", _PLAIN_TEXT)
    if old_text != new_text:
        problems.append(f"the text of dataset {dataset.name!r} was read as {json.dumps(old_text, sort_keys=True)} in "
                        f"training and as {json.dumps(new_text, sort_keys=True)} now (data.normalize / data.format / "
                        f"data.packing)")
    if not problems and recorded["splits_sha256"] != now["splits_sha256"]:
        problems.append(f"the loaded data of dataset {dataset.name!r} changed since training: splits sha256 "
                        f"{recorded['splits_sha256']} recorded, {now['splits_sha256']} now")
    if problems and not allow_change:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataChangedError(f"{problems[0]}{more}; restore the data (ddiff sample and ddiff evaluate accept "
                               "--allow-data-change to use it anyway; training and train-planner do not)")
    for problem in problems:
        warnings.warn(f"DATA CHANGED SINCE TRAINING (--allow-data-change): {problem}; results describe the new "
                      f"data, not the data of {path}", DataChangedWarning, stacklevel=2)
    return problems
