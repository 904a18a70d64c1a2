"""Drawing for ``ddiff report`` with Pillow alone: line charts with ticks, labels and a legend, and the page
that stacks the sample panel, the training curves and the quality-vs-NFE chart into one PNG.

Pillow is already a dependency (sample grids); matplotlib is not, so the report needs no extra install. The
charts are plain: linear or log10 axes with "nice" ticks (1, 2, 5 x 10^k), one colour per series.

Layout (pixels): the page is :data:`WIDTH` wide; a :data:`HEADER_H` title strip, the samples panel
(:data:`SAMPLES_H`), the two training charts side by side (:data:`CURVES_H`), and, only when there are
quality files, the quality chart (:data:`QUALITY_H`). :func:`page_size` gives the size for a report.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["WIDTH", "HEADER_H", "SAMPLES_H", "CURVES_H", "QUALITY_H", "page_size", "nice_ticks", "draw_chart",
           "render_page"]

WIDTH = 1000
HEADER_H = 36
SAMPLES_H = 400
CURVES_H = 330
QUALITY_H = 360
#: Matplotlib's "tab10" colours.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
#: At most this many legend entries are drawn; further series are summarised as "+N more".
MAX_LEGEND = 10

Series = dict[str, list[tuple[float, float]]]
#: Values beyond this magnitude are not plotted (their differences would overflow the axis arithmetic), nor
#: non-zero values below MIN_ABS (a log axis down there needs powers of ten that underflow to 0, e.g. 5e-324).
MAX_ABS = 1e100
MIN_ABS = 1e-100


def plottable(v: float) -> bool:
    """Whether a chart draws ``v``: finite, and 0 or of magnitude in ``MIN_ABS..MAX_ABS``."""
    return math.isfinite(v) and (v == 0 or MIN_ABS <= abs(v) <= MAX_ABS)


def page_size(with_quality: bool) -> tuple[int, int]:
    """(width, height) of the report PNG: the quality chart is drawn only when there is quality data."""
    return WIDTH, HEADER_H + SAMPLES_H + CURVES_H + (QUALITY_H if with_quality else 0)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, ValueError, OSError):
        return ImageFont.load_default()


def _clip(text: str, limit: int) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(v: float) -> str:
    text = f"{v:.4g}"
    return text.replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 x 10^k) inside ``[lo, hi]``; ``lo < hi``."""
    raw = (hi - lo) / max(1, count)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    k = first
    while k * step <= hi + 1e-9 * step and len(ticks) < 4 * count:
        ticks.append(0.0 if abs(k * step) < 1e-12 * step else k * step)
        k += 1
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks on a log10 axis spanning ``10**lo .. 10**hi``: 1, 2, 5 per decade when few decades, else 1."""
    mults = (1, 2, 5) if hi - lo <= 3 else (1,)
    ticks = [m * 10.0 ** d for d in range(math.floor(lo), math.ceil(hi) + 1) for m in mults]
    ticks = [t for t in ticks if t > 0 and math.isfinite(t) and lo - 1e-9 <= math.log10(t) <= hi + 1e-9]
    return ticks if len(ticks) >= 2 else [10.0 ** lo, 10.0 ** hi]


class _Axis:
    """Maps data values to [0, 1] on a linear or log10 scale; the range comes from the finite values."""

    def __init__(self, values: Sequence[float], log: bool | None) -> None:
        finite = [v for v in values if plottable(v)]
        positive = [v for v in finite if v > 0]
        if log is None:  # automatic: log when every value is positive and they span more than 30x
            log = bool(finite) and len(positive) == len(finite) and max(positive) > 30 * min(positive)
        self.log = bool(log) and bool(positive)
        vals = [math.log10(v) for v in positive] if self.log else finite
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if hi - lo < 1e-12 * max(1.0, abs(hi)):  # one value: pad the range around it
            pad = 0.5 if self.log else max(abs(hi) * 0.1, 1e-3)
            lo, hi = lo - pad, hi + pad
        span = hi - lo
        self.lo, self.hi = lo - 0.04 * span, hi + 0.04 * span

    def frac(self, v: float) -> float | None:
        if not plottable(v) or (self.log and v <= 0):
            return None
        return ((math.log10(v) if self.log else v) - self.lo) / (self.hi - self.lo)

    def ticks(self) -> list[float]:
        return _log_ticks(self.lo, self.hi) if self.log else nice_ticks(self.lo, self.hi)


def draw_chart(image: Image.Image, box: tuple[int, int, int, int], title: str, series: Series, xlabel: str,
               ylabel: str, *, xlog: bool | None = False, ylog: bool | None = None, empty: str = "no data",
               reference: float | None = None) -> None:
    """Draw a line chart of ``series`` (label -> [(x, y), ...], points sorted by x) into ``box`` =
    (left, top, right, bottom) of ``image``. Non-finite points are skipped (and, on a log axis, values <= 0).
    A series with more than two points per pixel column is drawn as the mean of each column over a light band
    spanning the column's minimum to maximum.
    ``reference`` draws a dashed horizontal line labelled "reference". With no plottable point the box
    shows ``empty`` instead."""
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = box
    title_font, font = _font(15), _font(12)
    draw.text((left + 8, top + 4), _clip(title, 110), fill="black", font=title_font)
    px0, py0, px1, py1 = left + 72, top + 40, right - 14, bottom - 40
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts] + ([reference] if reference is not None else [])
    xaxis, yaxis = _Axis(xs, xlog), _Axis(ys, ylog)
    points = {name: [(xaxis.frac(x), yaxis.frac(y)) for x, y in pts] for name, pts in series.items()}
    points = {name: [(fx, fy) for fx, fy in pts if fx is not None and fy is not None] for name, pts in points.items()}
    draw.rectangle([px0, py0, px1, py1], outline="black")
    if not any(points.values()):
        draw.text(((px0 + px1) // 2, (py0 + py1) // 2), _clip(empty, 90), fill=(90, 90, 90), font=font, anchor="mm")
        return

    def to_px(fx: float, fy: float) -> tuple[float, float]:
        return px0 + fx * (px1 - px0), py1 - fy * (py1 - py0)

    for t in xaxis.ticks():
        f = xaxis.frac(t)
        if f is not None and -1e-6 <= f <= 1 + 1e-6:
            x, _ = to_px(f, 0)
            draw.line([x, py0, x, py1], fill=(230, 230, 230))
            draw.line([x, py1, x, py1 + 4], fill="black")
            draw.text((x, py1 + 6), _fmt(t), fill="black", font=font, anchor="mt")
    for t in yaxis.ticks():
        f = yaxis.frac(t)
        if f is not None and -1e-6 <= f <= 1 + 1e-6:
            _, y = to_px(0, f)
            draw.line([px0, y, px1, y], fill=(230, 230, 230))
            draw.line([px0 - 4, y, px0, y], fill="black")
            draw.text((px0 - 6, y), _fmt(t), fill="black", font=font, anchor="rm")
    draw.rectangle([px0, py0, px1, py1], outline="black")
    scale = lambda log: " (log scale)" if log else ""  # noqa: E731
    draw.text(((px0 + px1) // 2, bottom - 6), _clip(xlabel, 90) + scale(xaxis.log), fill="black", font=font,
              anchor="md")
    draw.text((left + 8, top + 4 + 17), _clip(ylabel, 60) + scale(yaxis.log), fill=(60, 60, 60), font=font)
    if reference is not None:
        f = yaxis.frac(reference)
        if f is not None:
            _, y = to_px(0, f)
            for x in range(px0, px1, 10):
                draw.line([x, y, min(x + 5, px1), y], fill="black", width=1)
    names = list(series)
    for i, name in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        xy = [to_px(fx, fy) for fx, fy in points[name]]
        if len(xy) > 2 * (px1 - px0):  # dense: a light min-max band per pixel column under the column means
            xy = _column_means(draw, xy, tuple(int(255 - 0.3 * (255 - c)) for c in colour))
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        if len(xy) <= 60:
            for x, y in xy:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    legend = names[:MAX_LEGEND] + ([f"+{len(names) - MAX_LEGEND} more"] if len(names) > MAX_LEGEND else [])
    legend += ["reference (dashed)"] if reference is not None else []
    width = max(draw.textlength(_clip(n, 40), font=font) for n in legend) + 30
    lx, ly = px1 - width - 6, py0 + 6
    draw.rectangle([lx, ly, px1 - 6, ly + 16 * len(legend) + 4], fill="white", outline=(180, 180, 180))
    for j, name in enumerate(legend):
        colour = PALETTE[j % len(PALETTE)] if j < min(len(names), MAX_LEGEND) else (0, 0, 0)
        draw.rectangle([lx + 6, ly + 7 + 16 * j, lx + 18, ly + 13 + 16 * j], fill=colour)
        draw.text((lx + 24, ly + 3 + 16 * j), _clip(name, 40), fill="black", font=font)


def _column_means(draw: ImageDraw.ImageDraw, xy: list[tuple[float, float]], light: tuple[int, ...]
                  ) -> list[tuple[float, float]]:
    """Bin pixel points by column: draw each column's min-max range in ``light`` and return the column means."""
    arr = np.asarray(xy, dtype=np.float64)
    cols = np.rint(arr[:, 0]).astype(np.int64)
    uniq, inverse, counts = np.unique(cols, return_inverse=True, return_counts=True)
    mean = np.bincount(inverse, weights=arr[:, 1]) / counts
    lo = np.full(len(uniq), np.inf)
    hi = np.full(len(uniq), -np.inf)
    np.minimum.at(lo, inverse, arr[:, 1])
    np.maximum.at(hi, inverse, arr[:, 1])
    for x, a, b in zip(uniq.tolist(), lo.tolist(), hi.tolist()):
        draw.line([x, a, x, b], fill=light)
    return list(zip(uniq.astype(float).tolist(), mean.tolist()))


def _samples_panel(image: Image.Image, top: int, grid: np.ndarray | None, lines: Sequence[str], title: str) -> None:
    draw = ImageDraw.Draw(image)
    draw.text((8, top + 4), _clip(title, 130), fill="black", font=_font(15))
    avail_w, avail_h = WIDTH - 16, SAMPLES_H - 32
    if grid is not None:
        tile = Image.fromarray(grid).convert("RGB")
        factor = min(avail_w // tile.width, avail_h // tile.height)
        if factor >= 2:  # small grids (8x8 digits) are enlarged by a whole factor, pixels kept sharp
            tile = tile.resize((tile.width * factor, tile.height * factor), Image.NEAREST)
        if tile.width > avail_w or tile.height > avail_h:
            ratio = min(avail_w / tile.width, avail_h / tile.height)
            tile = tile.resize((max(1, int(tile.width * ratio)), max(1, int(tile.height * ratio))), Image.NEAREST)
        image.paste(tile, ((WIDTH - tile.width) // 2, top + 28))
        return
    font = _font(12)
    for i, line in enumerate(lines[: (avail_h - 4) // 16]):
        draw.text((12, top + 30 + 16 * i), _clip(line, 150), fill="black", font=font)


def render_page(title: str, samples_title: str, grid: np.ndarray | None, sample_lines: Sequence[str],
                loss: Series, bits: Series, quality: Series | None, quality_metric: str,
                quality_reference: float | None, curves_missing: str | None = None,
                quality_empty: str = "no point to plot", histogram: Series | None = None) -> Image.Image:
    """The whole report PNG (RGB, :func:`page_size`). ``grid``: a ``uint8`` sample grid (H, W) or (H, W, 3),
    scaled down to fit the panel if larger, else ``sample_lines`` are printed there (text excerpts or what is
    missing). ``loss`` and ``bits``: the training charts (x = step). ``quality``: sampler -> [(NFE, value)],
    or None for no quality chart. ``curves_missing``: why there are no training curves, shown in their charts;
    ``quality_empty``: what the quality chart says when it has no point. ``histogram`` (count runs): label ->
    [(count + 1, share per unit count)], drawn on log-log axes in the samples panel instead of the grid / lines."""
    size = page_size(quality is not None)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 8), _clip(title, 120), fill="black", font=_font(18))
    top = HEADER_H
    if histogram is not None:
        draw_chart(image, (0, top, WIDTH, top + SAMPLES_H), f"count histograms: {samples_title}", histogram,
                   "count + 1", "share per unit count", xlog=True, ylog=True, empty="no count to plot")
    else:
        _samples_panel(image, top, grid, sample_lines, samples_title)
    top += SAMPLES_H
    half = WIDTH // 2
    draw_chart(image, (0, top, half, top + CURVES_H), "training loss", loss, "step", "loss (per example)",
               empty=curves_missing or "no training records in metrics.jsonl")
    draw_chart(image, (half, top, WIDTH, top + CURVES_H), "bits per dimension", bits, "step", "bits/dim",
               empty=curves_missing or "no ELBO / validation records in metrics.jsonl")
    if quality is not None:
        top += CURVES_H
        nfes = [x for pts in quality.values() for x, _ in pts]
        xlog = bool(nfes) and min(nfes) > 0 and max(nfes) >= 4 * min(nfes)  # NFE spans octaves: log axis
        draw_chart(image, (0, top, WIDTH, top + QUALITY_H), f"sample quality vs NFE: {quality_metric}", quality,
                   "NFE (network evaluations per sample)", f"{quality_metric} (samples)", xlog=xlog, ylog=None,
                   empty=quality_empty,
                   reference=quality_reference)
    return image
