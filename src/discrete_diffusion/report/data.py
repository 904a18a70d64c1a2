"""Reading the inputs of ``ddiff report`` from an untrusted run directory, bounded and validated.

* ``metrics.jsonl`` (:func:`read_metrics`): the last :data:`MAX_METRICS_BYTES` only; corrupt and blank lines,
  and NaN / infinite / non-numeric values, are skipped and counted;
* ``quality/*.json`` (:func:`read_quality`, schema in docs/report.md): at most :data:`MAX_QUALITY_FILES`
  files of :data:`MAX_QUALITY_BYTES` each, every field validated, a bad file skipped with its reason;
  :func:`quality_series` turns them into one quality-vs-NFE curve per sampler;
* samples (:func:`read_samples`): the first :data:`MAX_GRID` samples of the newest ``samples/*.npy`` as an
  image grid, or the decoded text ``ddiff sample`` writes beside it for text and DNA runs.

Files are opened only if they are regular files, and inside the run directory never through a symlink.
"""

from __future__ import annotations

import io
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.limits import MAX_NUM_STATES, human_bytes
from ..data.npy_reader import read_npy_header
from ..runs.json_reader import loads_bounded
from .plots import MAX_ABS, MIN_ABS, Series, plottable

__all__ = ["MetricsLog", "QualityRecord", "SamplesView", "CURVE_KEYS", "MAX_METRICS_BYTES", "read_metrics",
           "parse_quality", "read_quality", "default_metric", "quality_series", "quality_reference",
           "read_samples", "read_json"]


#: Only the last this many bytes of metrics.jsonl are read (the report says so when the file is larger).
MAX_METRICS_BYTES = 32 << 20
#: Largest quality JSON read, and most quality files read (the first ones by name).
MAX_QUALITY_BYTES = 1 << 20
MAX_QUALITY_FILES = 500
#: At most this many metrics per quality file, and characters per name / sampler / family / path.
MAX_QUALITY_METRICS = 64
MAX_NAME_CHARS = 200
#: At most this many samples are drawn in the grid (8 x 8), and text lines / characters shown.
MAX_GRID = 64
MAX_TEXT_LINES = 16
MAX_TEXT_CHARS = 160
_MAX_TEXT_READ = 64 << 10
_MAX_SMALL_JSON = 1 << 20
_MAX_SAMPLE_BYTES = 16 << 20
_MAX_STEP = 10**15
CURVE_KEYS = {"loss": "loss", "train_elbo_diffusion_bpd": "train ELBO (diffusion term)",
              "val_nll_bits_per_dim": "validation NLL"}


def _open_regular(path: Path, follow: bool = False) -> io.BufferedReader:
    """Open ``path`` for reading only if it is a regular file; never a symlink unless ``follow`` (a path the
    user typed), never blocking on a FIFO. Raises ValueError naming the path otherwise."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow else getattr(os, "O_NOFOLLOW", 0))
    if not follow and path.is_symlink():
        raise ValueError(f"{path} is a symlink; the report reads only regular files in the run directory")
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise ValueError(f"cannot open {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def read_json(path: Path, limit: int, follow: bool = False) -> object:
    with _open_regular(path, follow) as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"{path} is larger than {human_bytes(limit)}")
    return loads_bounded(raw, str(path), max_bytes=limit)  # depth and number length bounded too


def _number(v: object) -> float | None:
    """``v`` as a float if it is an int or float (not a bool), else None; NaN/inf are kept."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:
        return math.inf


# ----------------------------------------------------------------------------------------------------- metrics
@dataclass
class MetricsLog:
    """The curves of metrics.jsonl: ``curves[key]`` = [(step, value)] sorted by step (the last record wins
    for a repeated step), for each key of :data:`CURVE_KEYS` found. ``records``: lines that parsed to a record
    with a valid ``step``; ``skipped_lines``: non-blank lines that did not (invalid JSON, not an object, no
    integer step in 0..10^15); ``blank_lines``; ``bad_values``: curve values that were NaN, infinite or not
    numbers (dropped); ``bytes_skipped``: leading bytes not read because the file is over the limit."""

    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    records: int = 0
    skipped_lines: int = 0
    blank_lines: int = 0
    bad_values: int = 0
    bytes_skipped: int = 0
    file_bytes: int = 0


def read_metrics(path: Path, max_bytes: int | None = None) -> MetricsLog:
    """Parse ``metrics.jsonl`` into curves, reading at most its last ``max_bytes`` bytes (default
    :data:`MAX_METRICS_BYTES`; the first, partial line of that window is dropped and not counted). Raises
    ValueError if the file cannot be opened."""
    max_bytes = MAX_METRICS_BYTES if max_bytes is None else max_bytes
    log = MetricsLog()
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        log.file_bytes = size
        if size > max_bytes:
            f.seek(size - max_bytes)
            log.bytes_skipped = size - max_bytes
        raw = f.read(max_bytes)
    lines = raw.split(b"\n")
    if log.bytes_skipped:
        dropped = lines.pop(0)
        log.bytes_skipped += len(dropped) + (1 if lines else 0)
    if lines and not lines[-1]:  # the empty piece after the final newline (or of an empty file)
        lines.pop()
    by_step: dict[str, dict[int, float]] = {key: {} for key in CURVE_KEYS}
    for line in lines:
        if not line.strip():
            log.blank_lines += 1
            continue
        try:
            record = loads_bounded(line, "metrics.jsonl line")
        except ValueError:
            log.skipped_lines += 1
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _MAX_STEP:
            log.skipped_lines += 1
            continue
        log.records += 1
        for key in CURVE_KEYS:
            if key in record:
                value = _number(record[key])
                if value is None or not plottable(value):  # NaN, inf, or beyond the drawable 1e-100..1e100
                    log.bad_values += 1
                else:
                    by_step[key][step] = value
    log.curves = {key: sorted((float(s), v) for s, v in pts.items()) for key, pts in by_step.items() if pts}
    return log


# ----------------------------------------------------------------------------------------------------- quality
@dataclass
class QualityRecord:
    """One ``RUN/quality/<stem>.json``: fields as written by ``ddiff evaluate --samples``; ``metrics[name]`` =
    (samples value, reference value), NaN where the file held a non-number."""

    stem: str
    sampler: str | None
    steps: int | None
    nfe: float | None
    seed: int | None
    num_samples: int
    family: str
    metrics: dict[str, tuple[float, float]]
    samples_path: str | None


def _optional(payload: dict, key: str, kind: type, where: str) -> object:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{where}: {key} must be {kind.__name__} or null, got {type(value).__name__}")
    if isinstance(value, str) and len(value) > MAX_NAME_CHARS:
        raise ValueError(f"{where}: {key} is longer than {MAX_NAME_CHARS} characters")
    return value


def parse_quality(payload: object, stem: str) -> QualityRecord:
    """Validate one quality JSON (the schema in docs/report.md); ValueError names the bad field."""
    where = f"quality/{stem}.json"
    if not isinstance(payload, dict):
        raise ValueError(f"{where}: expected a JSON object")
    nfe = payload.get("nfe")
    nfe = None if nfe is None else _number(nfe)
    if payload.get("nfe") is not None and (nfe is None or not plottable(nfe) or nfe < 0):
        raise ValueError(f"{where}: nfe must be 0 or a number in {MIN_ABS:g}..{MAX_ABS:g}, or null; got {nfe!r}")
    num = payload.get("num_samples")
    if isinstance(num, bool) or not isinstance(num, int) or num < 0:
        raise ValueError(f"{where}: num_samples must be an integer >= 0")
    family = payload.get("family")
    if not isinstance(family, str) or len(family) > MAX_NAME_CHARS:
        raise ValueError(f"{where}: family must be a string of at most {MAX_NAME_CHARS} characters")
    raw = payload.get("metrics")
    if not isinstance(raw, dict) or len(raw) > MAX_QUALITY_METRICS:
        raise ValueError(f"{where}: metrics must be an object with at most {MAX_QUALITY_METRICS} entries")
    metrics: dict[str, tuple[float, float]] = {}
    for name, pair in raw.items():
        if len(name) > MAX_NAME_CHARS or not isinstance(pair, dict):
            raise ValueError(f"{where}: metric entries must be {{\"samples\": x, \"reference\": y}} objects "
                             f"with names of at most {MAX_NAME_CHARS} characters")
        values = [_number(pair.get(k)) for k in ("samples", "reference")]
        metrics[name] = tuple(math.nan if v is None else v for v in values)  # type: ignore[assignment]
    steps = _optional(payload, "steps", int, where)
    seed = _optional(payload, "seed", int, where)
    return QualityRecord(stem, _optional(payload, "sampler", str, where), steps, nfe, seed, num, family, metrics,
                         _optional(payload, "samples_path", str, where))


def read_quality(directory: Path) -> tuple[list[QualityRecord], list[str]]:
    """The valid records of ``directory/*.json`` sorted by file name, and one note per file skipped (why)."""
    records: list[QualityRecord] = []
    notes: list[str] = []
    if not directory.is_dir() or directory.is_symlink():
        return records, notes
    names = sorted(p.name for p in directory.iterdir() if p.name.endswith(".json"))
    if len(names) > MAX_QUALITY_FILES:
        notes.append(f"quality/ holds {len(names)} JSON files; only the first {MAX_QUALITY_FILES} by name are read")
        names = names[:MAX_QUALITY_FILES]
    for name in names:
        try:
            records.append(parse_quality(read_json(directory / name, MAX_QUALITY_BYTES), name[: -len(".json")]))
        except ValueError as err:
            notes.append(f"skipped {name}: {err}")
    return records, notes


def default_metric(records: list[QualityRecord]) -> str | None:
    """The first metric (in the first file's order) that every record has; None if there is none."""
    if not records:
        return None
    common = [name for name in records[0].metrics if all(name in r.metrics for r in records)]
    return common[0] if common else None


def quality_series(records: list[QualityRecord], metric: str) -> Series:
    """The quality-vs-NFE curves: sampler name (``"(unknown sampler)"`` for null) -> [(NFE, value)] sorted by
    NFE, the value being the metric on the samples, averaged over records (seeds) at the same NFE. Records
    without an NFE, without the metric or with a non-finite value are left out."""
    sums: dict[str, dict[float, list[float]]] = {}
    for r in records:
        if r.nfe is None or metric not in r.metrics or not plottable(r.metrics[metric][0]):
            continue
        name = r.sampler if r.sampler is not None else "(unknown sampler)"
        sums.setdefault(name, {}).setdefault(r.nfe, []).append(r.metrics[metric][0])
    return {name: sorted((nfe, sum(v) / len(v)) for nfe, v in pts.items()) for name, pts in sums.items()}


def quality_reference(records: list[QualityRecord], metric: str) -> float | None:
    """The mean of the finite reference values of ``metric`` (the dashed line of the chart), or None."""
    refs = [r.metrics[metric][1] for r in records if metric in r.metrics and plottable(r.metrics[metric][1])]
    return sum(refs) / len(refs) if refs else None


# ----------------------------------------------------------------------------------------------------- samples
@dataclass
class SamplesView:
    """What the samples panel shows: ``grid`` (uint8 image grid) for image runs, else ``lines`` (decoded text,
    array rows, or what is missing); ``source``: the file shown, None when there is none; ``notes``."""

    grid: np.ndarray | None = None
    lines: list[str] = field(default_factory=list)
    source: Path | None = None
    kind: str = "missing"
    notes: list[str] = field(default_factory=list)


def _newest_npy(directory: Path) -> Path | None:
    if not directory.is_dir() or directory.is_symlink():
        return None
    found = []
    for p in directory.iterdir():
        st = p.lstat()
        if p.name.endswith(".npy") and stat.S_ISREG(st.st_mode):
            found.append((st.st_mtime, p.name, p))
    return max(found)[2] if found else None


def _read_head(path: Path, follow: bool) -> np.ndarray:
    """The first :data:`MAX_GRID` samples of a ``.npy`` (C order: only their bytes are read)."""
    with _open_regular(path, follow) as f:
        header = read_npy_header(f, str(path), "samples")
        if header.fortran or len(header.shape) < 2:
            raise ValueError(f"{path}: expected a C-order array of samples (N, *sites), got shape {header.shape}")
        n = min(header.shape[0], MAX_GRID)
        row = math.prod(header.shape[1:]) * header.dtype.itemsize
        if n == 0 or row == 0:
            raise ValueError(f"{path} holds no samples (shape {header.shape})")
        if n * row > _MAX_SAMPLE_BYTES:
            raise ValueError(f"{path}: {n} samples of shape {header.shape[1:]} take over "
                             f"{human_bytes(_MAX_SAMPLE_BYTES)}; the report shows samples of at most that size")
        raw = f.read(n * row)
    if len(raw) < n * row:
        raise ValueError(f"{path}: truncated .npy ({len(raw)} of {n * row} bytes for the first {n} samples)")
    return np.frombuffer(bytearray(raw), dtype=header.dtype).reshape((n, *header.shape[1:]))


def _num_states(run_dir: Path, x: np.ndarray, view: SamplesView) -> int:
    """Levels K for the grid: ``num_states`` of RUN/data.json, else the samples' max + 1 (noted)."""
    try:
        manifest = read_json(run_dir / "data.json", _MAX_SMALL_JSON)
        k = manifest.get("num_states") if isinstance(manifest, dict) else None
        if not isinstance(k, bool) and isinstance(k, int) and 1 <= k <= MAX_NUM_STATES:
            return k
        view.notes.append("data.json has no valid num_states; grey levels scaled to the samples' maximum")
    except ValueError as err:
        view.notes.append(f"no num_states ({err}); grey levels scaled to the samples' maximum")
    finite = x[np.isfinite(x)] if x.dtype.kind == "f" else x  # inf / NaN: image_grid refuses them with a note
    top = float(finite.max(initial=0))
    return max(2, int(min(top, MAX_NUM_STATES - 1)) + 1)


def _text_lines(path: Path, follow: bool) -> list[str]:
    with _open_regular(path, follow) as f:
        raw = f.read(_MAX_TEXT_READ)
    lines = raw.decode("utf-8", errors="replace").split("\n")[:MAX_TEXT_LINES]
    return [line if len(line) <= MAX_TEXT_CHARS else line[: MAX_TEXT_CHARS - 3] + "..." for line in lines if line]


def read_samples(run_dir: Path, samples: Path | None = None) -> SamplesView:
    """The samples panel. ``samples`` (a ``.npy``, or a ``.txt`` of decoded text) is the user's choice and
    any problem with it raises ValueError; otherwise the newest ``RUN/samples/*.npy`` is used and problems
    become notes. A ``.txt`` beside the ``.npy`` (text / DNA runs) is shown as text; a (N, H, W) or
    (N, C, H, W) array with C in {1, 3} as an image grid (levels from RUN/data.json); other arrays as rows."""
    from .grids import image_grid

    view = SamplesView()
    explicit = samples is not None
    path = samples if explicit else _newest_npy(run_dir / "samples")
    if path is None:
        view.lines = [f"no samples: {run_dir / 'samples'} has no .npy; draw some with `ddiff sample {run_dir}`"]
        view.notes.append("missing: samples (no RUN/samples/*.npy)")
        return view
    view.source = path
    try:
        text = path if path.suffix == ".txt" else path.with_suffix(".txt")
        if path.suffix == ".txt" or (text.exists() or text.is_symlink()):
            view.kind, view.lines = "text", _text_lines(text, follow=explicit)
            view.source = text
            return view
        if path.suffix != ".npy":
            raise ValueError(f"--samples must be a .npy (or a .txt of decoded text), got {path.name}")
        x = _read_head(path, follow=explicit)
        if x.ndim == 3 or (x.ndim == 4 and x.shape[1] in (1, 3)):
            view.kind, view.grid = "image", image_grid(x, _num_states(run_dir, x, view), nrow=8, scale=1, padding=1)
        else:
            view.kind = "array"
            view.lines = [" ".join(str(v) for v in row.reshape(-1)[:48]) for row in x[:MAX_TEXT_LINES]]
    except ValueError as err:
        if explicit:
            raise
        view.kind, view.grid, view.source = "missing", None, None
        view.lines = [f"samples not shown: {err}"]
        view.notes.append(f"samples not shown: {err}")
    return view
