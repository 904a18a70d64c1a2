"""``ddiff report RUN``: one PNG and one self-contained HTML page summarising a run directory.

What it shows (docs/report.md):

* samples: a grid of the newest ``RUN/samples/*.npy`` (or ``--samples``) for image runs, decoded excerpts
  from the matching ``.txt`` (written by ``ddiff sample``) for text / DNA runs, the first rows otherwise;
* training: ``loss`` and ``train_elbo_diffusion_bpd`` (one line per logged step) and ``val_nll_bits_per_dim``
  (one line per validation) against ``step``, from ``RUN/metrics.jsonl`` (keys written by
  :mod:`discrete_diffusion.train.trainer`);
* count runs (``process.name=jump`` or ``data.counts=true``): instead of rows of numbers, histograms of the
  samples and of the training data on log-log axes (:mod:`discrete_diffusion.report.counts`);
* sample quality: for ``RUN/quality/*.json`` (written by ``ddiff evaluate --samples``), the chosen metric
  against NFE, one curve per sampler, and a table of every metric (samples vs reference).

The run directory is untrusted input: :mod:`discrete_diffusion.report.data` reads it (regular files only,
no symlinks, every size bounded before reading, every field validated), the charts are drawn by
:mod:`discrete_diffusion.report.plots`, and every string from a file is HTML-escaped here. What is
missing or skipped is listed in the report and printed, not fatal; errors (one line) are a path that is
not a run directory (no ``config.yaml``), a ``--samples`` file that cannot be shown, a ``--metric`` in no
quality file, and a ``RUN/report`` that is a symlink. Both files are written with
:func:`~discrete_diffusion.runs.atomic_io.atomic_write` (temp file, fsync, rename).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..data.limits import human_bytes
from ..runs.atomic_io import atomic_write
from . import data as report_data
from .counts import count_series, is_count_run
from .data import (
    CURVE_KEYS,
    MetricsLog,
    QualityRecord,
    SamplesView,
    default_metric,
    quality_reference,
    quality_series,
    read_metrics,
    read_quality,
    read_samples,
)
from .plots import Series, page_size, render_page

__all__ = ["Report", "build_report", "render_png", "render_html", "write_report", "CURVE_KEYS", "MetricsLog",
           "QualityRecord", "SamplesView", "default_metric", "quality_reference", "quality_series", "read_metrics",
           "read_quality", "read_samples"]


#: At most this many metric columns (each a samples and a reference column) in the HTML quality table.
MAX_TABLE_METRICS = 64


@dataclass
class Report:
    """Everything the PNG and the HTML show, and the notes (missing or skipped inputs)."""

    run_dir: Path
    samples: SamplesView
    metrics: MetricsLog | None
    quality: list[QualityRecord]
    metric: str | None
    notes: list[str]
    counts: Series | None = None
    counts_summary: str = ""


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
    counts, counts_summary = None, ""
    if view.kind == "array" and view.source is not None and is_count_run(run):
        try:
            counts, counts_summary = count_series(run, view.source, follow=samples is not None)
        except ValueError as err:
            notes.append(f"count histograms not shown: {err}")
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
                         f"{human_bytes(report_data.MAX_METRICS_BYTES)} were read "
                         f"({metrics.bytes_skipped} bytes skipped)")
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
    return Report(run, view, metrics, records, metric, notes, counts, counts_summary)


def render_png(report: Report) -> bytes:
    """The report PNG, encoded (size :func:`~discrete_diffusion.report.plots.page_size`)."""
    curves = report.metrics.curves if report.metrics is not None else {}
    loss = {CURVE_KEYS["loss"]: curves["loss"]} if "loss" in curves else {}
    bits = {CURVE_KEYS[k]: curves[k] for k in ("train_elbo_diffusion_bpd", "val_nll_bits_per_dim") if k in curves}
    quality = None
    if report.quality:
        quality = quality_series(report.quality, report.metric) if report.metric else {}
    source = report.samples.source.name if report.samples.source else "none"
    image = render_page(f"ddiff report: {_run_name(report.run_dir)}", f"samples ({report.samples.kind}): {source}",
                        report.samples.grid, report.samples.lines, loss, bits, quality,
                        report.metric or "no metric common to all files",
                        quality_reference(report.quality, report.metric) if report.metric else None,
                        None if report.metrics is not None else "no metrics.jsonl (see the notes)",
                        f"no quality file has both an NFE and a finite {report.metric}" if report.metric
                        else "the quality files share no metric: pass --metric NAME", report.counts)
    assert image.size == page_size(quality is not None)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _run_name(run_dir: Path) -> str:
    return run_dir.resolve().name or str(run_dir)


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
             f"<title>ddiff report: {_e(_run_name(report.run_dir))}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em;max-width:1040px}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}th{background:#eee}"
             "pre{background:#f6f6f6;padding:6px;overflow-x:auto}</style></head><body>",
             f"<h1>ddiff report: {_e(report.run_dir)}</h1>",
             f'<img alt="samples, training curves and sample quality" width="{page_size(bool(report.quality))[0]}"'
             f' src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">']
    view = report.samples
    parts.append(f"<h2>Samples</h2><p>{_e(view.kind)}: {_e(view.source if view.source else 'none')}</p>")
    if report.counts is not None:
        parts.append(f"<p>count histograms (log-log axes, in the picture): {_e(report.counts_summary)}</p>")
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
        if len(names) > MAX_TABLE_METRICS:  # bound the table: files may each name different metrics
            parts.append(f"<p>{len(names)} metric names; the table shows the first {MAX_TABLE_METRICS}</p>")
            names = names[:MAX_TABLE_METRICS]
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


def _output_dir(out: Path, user_given: bool) -> Path:
    """Create ``out`` (and parents) and return it. A ``--out`` the user typed may be a symlink (resolved once,
    the user chose it); ``RUN/report`` inside the untrusted run directory must not be one, nor become one."""
    if out.is_symlink():
        if not user_given:
            raise ValueError(f"refusing to write into {out}: it is a symlink (remove it or give --out DIR)")
        out = Path(os.path.realpath(out))
    out.mkdir(parents=True, exist_ok=True)
    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"refusing to write into {out}: not a directory")
    return out


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 samples: str | os.PathLike | None = None, metric: str | None = None) -> tuple[Report, dict[str, Path]]:
    """Build the report of ``run_dir`` and write ``report.png`` and ``report.html`` into ``out`` (default
    ``RUN/report``) atomically; returns the report and ``{"png": path, "html": path}``."""
    report = build_report(run_dir, samples, metric)
    directory = _output_dir(Path(out) if out is not None else report.run_dir / "report", out is not None)
    png = render_png(report)
    page = render_html(report, png).encode("utf-8")
    paths = {"png": directory / "report.png", "html": directory / "report.html"}
    atomic_write(paths["png"], lambda f: f.write(png))
    atomic_write(paths["html"], lambda f: f.write(page))
    return report, paths
