"""``ddiff report RUN``: one PNG and one self-contained HTML page summarising a run directory.

What it shows (docs/report.md):

* samples: a grid of the newest ``RUN/samples/*.npy`` (or ``--samples``) for image runs, decoded excerpts
  from the matching ``.txt`` (written by ``ddiff sample``) for text / DNA runs, the first rows otherwise;
* training: ``loss`` and ``train_elbo_diffusion_bpd`` (one line per logged step) and ``val_nll_bits_per_dim``
  (one line per validation) against ``step``, from ``RUN/metrics.jsonl`` (keys written by
  :mod:`discrete_diffusion.train.trainer`);
* sample quality: for ``RUN/quality/*.json`` (written by ``ddiff evaluate --samples``), the chosen metric
  against NFE, one curve per sampler, and a table of every metric (samples vs reference).

The run directory is untrusted input: files are opened without following symlinks and only if they are
regular files, every size is bounded before reading (metrics: the last :data:`MAX_METRICS_BYTES`; quality
files: :data:`MAX_QUALITY_BYTES` each, at most :data:`MAX_QUALITY_FILES`; samples: the first
:data:`MAX_GRID` samples), every field is validated, and every string from a file is HTML-escaped. What is
missing or skipped is listed in the report and printed, never fatal: the one error is a path that is not a
run directory (no ``config.yaml``). Output goes through :func:`~discrete_diffusion.train.atomic_io.atomic_write`
into a directory that must not be a symlink.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.limits import MAX_NUM_STATES, human_bytes
from .data.npy_reader import read_npy_header
from .report_plots import Series, page_size, render_page
from .train.atomic_io import atomic_write

__all__ = ["MetricsLog", "QualityRecord", "SamplesView", "Report", "read_metrics", "read_quality",
           "default_metric", "quality_series", "quality_reference", "read_samples", "build_report",
           "render_html", "write_report", "MAX_METRICS_BYTES"]

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


def _read_json(path: Path, limit: int, follow: bool = False) -> object:
    with _open_regular(path, follow) as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"{path} is larger than {human_bytes(limit)}")
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, 5000-digit ints
        raise ValueError(f"{path} is not valid JSON ({str(err).splitlines()[0][:100]})") from None


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
            record = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):
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
                if value is None or not math.isfinite(value):
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
    if payload.get("nfe") is not None and (nfe is None or not math.isfinite(nfe) or nfe < 0):
        raise ValueError(f"{where}: nfe must be a finite number >= 0 or null")
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
            records.append(parse_quality(_read_json(directory / name, MAX_QUALITY_BYTES), name[: -len(".json")]))
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
        if r.nfe is None or metric not in r.metrics or not math.isfinite(r.metrics[metric][0]):
            continue
        name = r.sampler if r.sampler is not None else "(unknown sampler)"
        sums.setdefault(name, {}).setdefault(r.nfe, []).append(r.metrics[metric][0])
    return {name: sorted((nfe, sum(v) / len(v)) for nfe, v in pts.items()) for name, pts in sums.items()}


def quality_reference(records: list[QualityRecord], metric: str) -> float | None:
    """The mean of the finite reference values of ``metric`` (the dashed line of the chart), or None."""
    refs = [r.metrics[metric][1] for r in records if metric in r.metrics and math.isfinite(r.metrics[metric][1])]
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
        manifest = _read_json(run_dir / "data.json", _MAX_SMALL_JSON)
        k = manifest.get("num_states") if isinstance(manifest, dict) else None
        if not isinstance(k, bool) and isinstance(k, int) and 1 <= k <= MAX_NUM_STATES:
            return k
        view.notes.append("data.json has no valid num_states; grey levels scaled to the samples' maximum")
    except ValueError as err:
        view.notes.append(f"no num_states ({err}); grey levels scaled to the samples' maximum")
    return max(2, int(x.max(initial=0)) + 1)


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
    from .visualize import image_grid

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


# ------------------------------------------------------------------------------------------------------ report
@dataclass
class Report:
    """Everything the PNG and the HTML show, and the notes (missing or skipped inputs)."""

    run_dir: Path
    samples: SamplesView
    metrics: MetricsLog | None
    quality: list[QualityRecord]
    metric: str | None
    notes: list[str]


def build_report(run_dir: str | os.PathLike, samples: str | os.PathLike | None = None,
                 metric: str | None = None) -> Report:
    """Read ``run_dir`` into a :class:`Report`. Raises ValueError if it is not a run directory (no
    config.yaml), if ``samples`` cannot be shown, or if ``metric`` is in no quality file."""
    run = Path(run_dir)
    if not run.is_dir() or not (run / "config.yaml").is_file():
        raise ValueError(f"{run} is not a run directory (no config.yaml); pass a directory written by "
                         f"`ddiff train` or `ddiff demo`")
    view = read_samples(run, Path(samples) if samples is not None else None)
    notes = list(view.notes)
    metrics = None
    if not (run / "metrics.jsonl").exists() and not (run / "metrics.jsonl").is_symlink():
        notes.append("missing: metrics.jsonl (no training curves)")
    else:
        try:
            metrics = read_metrics(run / "metrics.jsonl")
        except ValueError as err:
            notes.append(f"training curves not shown: {err}")
    if metrics is not None:
        if metrics.bytes_skipped:
            notes.append(f"metrics.jsonl is {human_bytes(metrics.file_bytes)}: only its last "
                         f"{human_bytes(MAX_METRICS_BYTES)} were read ({metrics.bytes_skipped} bytes skipped)")
        if metrics.skipped_lines or metrics.blank_lines or metrics.bad_values:
            notes.append(f"metrics.jsonl: skipped {metrics.skipped_lines} corrupt line(s), {metrics.blank_lines} "
                         f"blank line(s) and {metrics.bad_values} NaN/infinite/non-numeric value(s)")
    records, quality_notes = read_quality(run / "quality")
    notes += quality_notes
    if metric is not None:
        if not any(metric in r.metrics for r in records):
            known = sorted({name for r in records for name in r.metrics})
            raise ValueError(f"--metric {metric!r} is in no quality file; available: "
                             f"{', '.join(known) if known else 'none (no RUN/quality/*.json)'}")
    elif records:
        metric = default_metric(records)
        if metric is None:
            notes.append("the quality files share no metric: pass --metric NAME for the NFE chart")
    return Report(run, view, metrics, records, metric, notes)


def render_png(report: Report) -> bytes:
    """The report PNG, encoded (size :func:`~discrete_diffusion.report_plots.page_size`)."""
    curves = report.metrics.curves if report.metrics is not None else {}
    loss = {CURVE_KEYS["loss"]: curves["loss"]} if "loss" in curves else {}
    bits = {CURVE_KEYS[k]: curves[k] for k in ("train_elbo_diffusion_bpd", "val_nll_bits_per_dim") if k in curves}
    quality = None
    if report.quality:
        quality = quality_series(report.quality, report.metric) if report.metric else {}
    source = report.samples.source.name if report.samples.source else "none"
    image = render_page(f"ddiff report: {report.run_dir.name}", f"samples ({report.samples.kind}): {source}",
                        report.samples.grid, report.samples.lines, loss, bits, quality, report.metric or "?",
                        quality_reference(report.quality, report.metric) if report.metric else None)
    assert image.size == page_size(quality is not None)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Report, png: bytes) -> str:
    """A self-contained page: the PNG inline (base64 data URI), the samples excerpt, a training summary, the
    quality table and the notes. Every string from the run directory is escaped; a Content-Security-Policy
    forbids scripts and any outside resource."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
             'style-src \'unsafe-inline\'">',
             f"<title>ddiff report: {_e(report.run_dir.name)}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em;max-width:1040px}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}th{background:#eee}"
             "pre{background:#f6f6f6;padding:6px;overflow-x:auto}</style></head><body>",
             f"<h1>ddiff report: {_e(report.run_dir)}</h1>",
             f'<img alt="samples, training curves and sample quality" width="{page_size(bool(report.quality))[0]}"'
             f' src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">']
    view = report.samples
    parts.append(f"<h2>Samples</h2><p>{_e(view.kind)}: {_e(view.source if view.source else 'none')}</p>")
    if view.grid is None and view.lines:
        parts.append("<pre>" + _e("\n".join(view.lines)) + "</pre>")
    parts.append("<h2>Training</h2>")
    if report.metrics is None:
        parts.append("<p>no metrics.jsonl</p>")
    else:
        m = report.metrics
        rows = []
        for key, label in CURVE_KEYS.items():
            pts = m.curves.get(key, [])
            if pts:
                best = min(pts, key=lambda p: p[1])
                rows.append([f"{label} ({key})", str(len(pts)), f"{int(pts[-1][0])}", _num(pts[-1][1]),
                             _num(best[1]), f"{int(best[0])}"])
            else:
                rows.append([f"{label} ({key})", "0", "", "", "", ""])
        parts.append(_table(["curve", "points", "last step", "last value", "lowest", "at step"], rows))
        parts.append(f"<p>{m.records} records read; {m.skipped_lines} corrupt line(s), {m.blank_lines} blank "
                     f"line(s), {m.bad_values} NaN/infinite/non-numeric value(s) skipped</p>")
    if report.quality:
        names = list(dict.fromkeys(name for r in report.quality for name in r.metrics))
        header = ["file", "sampler", "steps", "NFE", "seed", "samples", "family"]
        header += [f"{n} ({w})" for n in names for w in ("samples", "reference")]
        rows = [[r.stem, r.sampler if r.sampler is not None else "", "" if r.steps is None else str(r.steps),
                 _num(r.nfe), "" if r.seed is None else str(r.seed), str(r.num_samples), r.family]
                + [_num(r.metrics[n][i]) if n in r.metrics else "" for n in names for i in (0, 1)]
                for r in sorted(report.quality, key=lambda r: (r.sampler or "", r.nfe if r.nfe is not None
                                                               else math.inf, r.stem))]
        parts.append(f"<h2>Sample quality</h2><p>chart metric: {_e(report.metric or 'none')}</p>")
        parts.append(_table(header, rows))
    parts.append("<h2>Notes</h2>")
    parts.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul>" if report.notes
                 else "<p>nothing missing or skipped</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _output_dir(out: Path) -> Path:
    """Create ``out`` (and parents) and refuse it if it is (or became) a symlink or not a directory."""
    if out.is_symlink():
        raise ValueError(f"refusing to write into {out}: it is a symlink (give a real directory with --out)")
    out.mkdir(parents=True, exist_ok=True)
    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"refusing to write into {out}: not a directory")
    return out


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 samples: str | os.PathLike | None = None, metric: str | None = None) -> tuple[Report, dict[str, Path]]:
    """Build the report of ``run_dir`` and write ``report.png`` and ``report.html`` into ``out`` (default
    ``RUN/report``) atomically; returns the report and ``{"png": path, "html": path}``."""
    report = build_report(run_dir, samples, metric)
    directory = _output_dir(Path(out) if out is not None else report.run_dir / "report")
    png = render_png(report)
    page = render_html(report, png).encode("utf-8")
    paths = {"png": directory / "report.png", "html": directory / "report.html"}
    atomic_write(paths["png"], lambda f: f.write(png))
    atomic_write(paths["html"], lambda f: f.write(page))
    return report, paths
