"""`ddiff report RUN`: the PNG and HTML are written, metrics.jsonl is read robustly and within a size bound,
quality files give one curve per sampler, strings from the run directory are escaped, and what is missing
is reported (docs/report.md)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import read_metrics as parse_metrics_lines
from PIL import Image

from discrete_diffusion.report import data as report_data
from discrete_diffusion.report import page as rep
from discrete_diffusion.report.plots import page_size


def _quality(directory: Path, stem: str, sampler: object, nfe: object, metrics: dict, **extra: object) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"sampler": sampler, "steps": None if nfe is None else int(nfe), "nfe": nfe, "seed": 0,
               "num_samples": 100, "family": "image", "metrics": metrics, "samples_path": None, **extra}
    (directory / f"{stem}.json").write_text(json.dumps(payload))


def _bare_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  name: digits\n")
    return run


def test_report_on_trained_run(trained_run: Path, ddiff, tmp_path: Path) -> None:
    res = ddiff("sample", trained_run, "--num", "12", "--steps", "3", "--out", tmp_path / "s", "--no-progress")
    assert res.rc == 0, res
    npy = tmp_path / "s" / "bridge_3steps_seed0.npy"
    res = ddiff("report", trained_run, "--out", tmp_path / "rep", "--samples", npy)
    assert res.rc == 0, res
    png, page = tmp_path / "rep" / "report.png", tmp_path / "rep" / "report.html"
    assert f"png:  {png}" in res.out and f"html: {page}" in res.out
    with Image.open(png) as img:
        img.load()
        assert img.format == "PNG" and img.size == page_size(False) == (1000, 766)
        panel = np.asarray(img.convert("L"))[40:430]
    assert panel.std() > 20  # the sample grid is drawn, not a blank panel
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and 'src="data:image/png;base64,' in text
    assert not list((tmp_path / "rep").glob(".*tmp"))
    # the curves are exactly the records of metrics.jsonl, parsed independently here
    lines = parse_metrics_lines(trained_run)
    report = rep.build_report(trained_run, npy)
    for key in rep.CURVE_KEYS:
        expected = sorted((float(r["step"]), r[key]) for r in lines if key in r)
        assert expected and report.metrics.curves[key] == expected
    assert report.samples.kind == "image" and report.samples.grid is not None
    assert report.metrics.skipped_lines == report.metrics.blank_lines == report.metrics.bad_values == 0


def test_report_defaults_say_what_is_missing(trained_run: Path, ddiff, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)  # training writes PNG grids only: no samples/*.npy yet
    res = ddiff("report", run)
    assert res.rc == 0, res
    assert "note: missing: samples (no RUN/samples/*.npy)" in res.out
    with Image.open(run / "report" / "report.png") as img:
        assert img.size == page_size(False)
    assert "ddiff sample" in (run / "report" / "report.html").read_text()


def test_missing_metrics_and_samples_are_reported(ddiff, tmp_path: Path) -> None:
    run = _bare_run(tmp_path)
    res = ddiff("report", run)
    assert res.rc == 0, res
    assert "missing: metrics.jsonl" in res.out and "missing: samples" in res.out
    with Image.open(run / "report" / "report.png") as img:
        assert img.size == page_size(False)
    page = (run / "report" / "report.html").read_text()
    assert "missing: metrics.jsonl (no training curves)" in page


def test_not_a_run_directory_is_one_line_error(ddiff, tmp_path: Path) -> None:
    for target in (tmp_path, tmp_path / "absent"):
        res = ddiff("report", target)
        assert res.rc == 2 and res.err.count("\n") == 1
        assert "is not a run directory (no config.yaml)" in res.err
    assert not (tmp_path / "report").exists()


def test_metrics_corrupt_lines_nan_and_missing_keys(tmp_path: Path) -> None:
    lines = [
        '{"step": 10, "loss": 2.5, "train_elbo_diffusion_bpd": 3.0}',
        "garbage {",                                        # corrupt
        "",                                                 # blank
        "   ",                                              # blank
        '{"step": 20, "loss": NaN, "train_elbo_diffusion_bpd": 2.0}',  # NaN value dropped, line kept
        '{"step": 20, "val_nll_bits_per_dim": 2.9, "val_nll_bits_per_dim_stderr": 0.1}',
        '{"step": 30, "loss": Infinity}',                   # bad value
        '{"step": 40, "loss": "1.0"}',                      # bad value (a string)
        '{"step": true, "loss": 1.0}',                      # corrupt: bool step
        '{"step": -1, "loss": 1.0}',                        # corrupt: negative step
        '{"loss": 1.0}',                                    # corrupt: no step
        "[1, 2]",                                           # corrupt: not an object
        "[" * 100000 + "]" * 100000,                        # corrupt: nesting too deep for the parser
        '{"step": 50, "grad_norm": 1.0}',                   # no curve key: fine
        '{"step": 30, "loss": 1.5}',                        # a resumed run re-logs step 30: last one wins
        '{"step": 60, "loss": 1.2',                         # torn last line (no newline)
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n")  # and one non-UTF-8 line
    log = rep.read_metrics(path)
    assert log.curves == {"loss": [(10.0, 2.5), (30.0, 1.5)],
                          "train_elbo_diffusion_bpd": [(10.0, 3.0), (20.0, 2.0)],
                          "val_nll_bits_per_dim": [(20.0, 2.9)]}
    assert (log.skipped_lines, log.blank_lines, log.bad_values) == (8, 2, 3)
    assert log.records == 7 and log.bytes_skipped == 0


def test_metrics_skip_count_is_reported(ddiff, tmp_path: Path) -> None:
    run = _bare_run(tmp_path)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\nnot json\n{"step": 2, "loss": NaN}\n\n')
    res = ddiff("report", run)
    assert res.rc == 0, res
    expected = "metrics.jsonl: skipped 1 corrupt line(s), 1 blank line(s) and 1 NaN/infinite/non-numeric value(s)"
    assert f"note: {expected}" in res.out
    assert expected in (run / "report" / "report.html").read_text()


def test_metrics_read_only_the_last_bytes(tmp_path: Path, monkeypatch, ddiff) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 201)]
    path.write_text("".join(lines))
    tail = "".join(lines[-10:])
    log = rep.read_metrics(path, max_bytes=len(tail) + 5)  # the window starts 5 bytes into line 190
    assert [s for s, _ in log.curves["loss"]] == [float(s) for s in range(191, 201)]
    assert log.skipped_lines == 0 and log.bytes_skipped == path.stat().st_size - len(tail)
    # through the CLI the bound is stated in the report
    run = _bare_run(tmp_path)
    shutil.copy(path, run / "metrics.jsonl")
    monkeypatch.setattr(report_data, "MAX_METRICS_BYTES", 1000)
    res = ddiff("report", run)
    assert res.rc == 0 and "only its last 1000 B were read" in res.out, res


def test_quality_one_curve_per_sampler(tmp_path: Path) -> None:
    q = tmp_path / "run" / "quality"
    for sampler, scale in (("bridge", 1.0), ("tau-leaping", 2.0)):
        for nfe in (20.0, 5.0, 10.0):  # written out of order
            _quality(q, f"{sampler}_{int(nfe)}", sampler, nfe,
                     {"tv": {"samples": scale / nfe, "reference": 0.01}, "fid": {"samples": nfe, "reference": 1.0}})
    _quality(q, "bridge_10_seed1", "bridge", 10.0, {"tv": {"samples": 0.3, "reference": 0.03},
                                                     "fid": {"samples": 1.0, "reference": 1.0}}, seed=1)
    fid = {"samples": 1, "reference": 1}
    _quality(q, "exact", "exact", None, {"tv": {"samples": 0.0, "reference": 0.01}, "fid": fid})
    _quality(q, "nan", "bridge", 40.0, {"tv": {"samples": None, "reference": 0.01}, "fid": fid})
    records, notes = rep.read_quality(q)
    assert notes == [] and len(records) == 9
    assert rep.default_metric(records) == "tv"  # first metric of the first file (by name) common to all
    series = rep.quality_series(records, "tv")
    assert series == {"bridge": [(5.0, 0.2), (10.0, pytest.approx((0.1 + 0.3) / 2)), (20.0, 0.05)],
                      "tau-leaping": [(5.0, 0.4), (10.0, 0.2), (20.0, 0.1)]}
    assert rep.quality_reference(records, "tv") == pytest.approx((8 * 0.01 + 0.03) / 9)
    assert rep.quality_series(records, "fid")["tau-leaping"] == [(5.0, 5.0), (10.0, 10.0), (20.0, 20.0)]


def test_quality_default_metric_common_to_all(tmp_path: Path) -> None:
    q = tmp_path / "quality"
    _quality(q, "a", "x", 1.0, {"only_a": {"samples": 1, "reference": 1}, "both": {"samples": 2, "reference": 2}})
    _quality(q, "b", "x", 2.0, {"both": {"samples": 3, "reference": 3}})
    records, _ = rep.read_quality(q)
    assert rep.default_metric(records) == "both"
    _quality(q, "c", "x", 3.0, {"other": {"samples": 3, "reference": 3}})
    assert rep.default_metric(rep.read_quality(q)[0]) is None


def test_quality_bad_files_are_skipped_with_reason(tmp_path: Path) -> None:
    q = tmp_path / "quality"
    _quality(q, "good", "bridge", 4.0, {"tv": {"samples": 0.1, "reference": 0.0}})
    _quality(q, "neg_nfe", "bridge", -1.0, {"tv": {"samples": 0.1, "reference": 0.0}})
    _quality(q, "long", "b" * 1000, 4.0, {"tv": {"samples": 0.1, "reference": 0.0}})
    _quality(q, "no_family", "bridge", 4.0, {"tv": {"samples": 0.1, "reference": 0.0}}, family=7)
    (q / "torn.json").write_text('{"sampler": "bridge", ')
    (q / "big.json").write_bytes(b" " * (report_data.MAX_QUALITY_BYTES + 1))
    os.symlink(q / "good.json", q / "link.json")
    records, notes = rep.read_quality(q)
    assert [r.stem for r in records] == ["good"]
    reasons = "\n".join(notes)
    for name, why in (("neg_nfe", "nfe must be"), ("long", "longer than"), ("no_family", "family must be"),
                      ("torn", "not valid JSON"), ("big", "larger than"), ("link", "is a symlink")):
        assert f"skipped {name}.json" in reasons and why in reasons, (name, reasons)


def test_hostile_strings_are_escaped(ddiff, tmp_path: Path) -> None:
    run = _bare_run(tmp_path)
    hostile = "<script>alert(1)</script>"
    _quality(run / "quality", "evil", hostile, 8.0,
             {'<img src=x onerror="alert(2)">': {"samples": 1.0, "reference": 0.5}}, family='"><iframe src=//x>',
             samples_path="</table><script>alert(3)</script>")
    (run / "samples").mkdir()
    np.save(run / "samples" / "s.npy", np.zeros((2, 5), dtype=np.int64))
    (run / "samples" / "s.txt").write_text("<b>bold</b> & <script>x</script>\nline two\n")
    res = ddiff("report", run)
    assert res.rc == 0, res
    page = (run / "report" / "report.html").read_text()
    for raw in ("<script", "<img src=x", "<iframe", "<b>bold"):
        assert raw not in page, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt; (samples)" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;x&lt;/script&gt;" in page
    assert "default-src 'none'" in page  # and a CSP forbids scripts should anything slip through
    with Image.open(run / "report" / "report.png") as img:
        assert img.size == page_size(True)


def test_text_run_shows_decoded_excerpt(tmp_path: Path) -> None:
    run = _bare_run(tmp_path)
    (run / "samples").mkdir()
    np.save(run / "samples" / "old.npy", np.zeros((2, 4), dtype=np.int64))
    (run / "samples" / "old.txt").write_text("old\n")
    np.save(run / "samples" / "new.npy", np.zeros((3, 4), dtype=np.int64))
    lines = ["in the beginning", "x" * 500] + [f"l{i}" for i in range(40)]
    (run / "samples" / "new.txt").write_text("\n".join(lines))
    os.utime(run / "samples" / "old.npy", (1, 1))
    view = rep.read_samples(run)
    assert view.kind == "text" and view.source == run / "samples" / "new.txt"
    assert view.lines[0] == "in the beginning" and len(view.lines[1]) == report_data.MAX_TEXT_CHARS
    assert len(view.lines) == report_data.MAX_TEXT_LINES


def test_image_levels_come_from_data_json(tmp_path: Path) -> None:
    run = _bare_run(tmp_path)
    (run / "samples").mkdir()
    x = np.zeros((3, 4, 4), dtype=np.int64)
    x[0, 0, 0] = 8
    np.save(run / "samples" / "s.npy", x)
    (run / "data.json").write_text(json.dumps({"num_states": 17}))
    view = rep.read_samples(run)
    assert view.kind == "image" and view.grid.max() == round(8 * 255 / 16)  # level 8 of 17 -> 128
    (run / "data.json").unlink()
    view = rep.read_samples(run)
    assert view.grid.max() == 255 and any("grey levels scaled" in n for n in view.notes)


def test_unknown_metric_and_bad_samples_are_errors(ddiff, tmp_path: Path) -> None:
    run = _bare_run(tmp_path)
    _quality(run / "quality", "a", "bridge", 4.0, {"tv": {"samples": 0.1, "reference": 0.0}})
    res = ddiff("report", run, "--metric", "fid")
    assert res.rc == 2 and "--metric 'fid' is in no quality file; available: tv" in res.err
    res = ddiff("report", run, "--samples", tmp_path / "nope.npy")
    assert res.rc == 2 and "cannot open" in res.err
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    res = ddiff("report", run, "--samples", tmp_path / "bad.npy")
    assert res.rc == 2 and "not a NumPy .npy array" in res.err
    assert not (run / "report").exists()


def test_symlinks_are_not_followed(ddiff, tmp_path: Path) -> None:
    run = _bare_run(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "m.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    os.symlink(outside / "m.jsonl", run / "metrics.jsonl")
    os.symlink(outside, run / "report")
    res = ddiff("report", run)
    assert res.rc == 2 and "is a symlink" in res.err
    assert sorted(p.name for p in outside.iterdir()) == ["m.jsonl"]  # nothing written through RUN/report
    res = ddiff("report", run, "--out", run / "report")  # a --out the user typed may be a link: followed
    assert res.rc == 0 and (outside / "report.png").is_file(), res
    os.unlink(run / "report")
    res = ddiff("report", run)
    assert res.rc == 0 and "training curves not shown" in res.out and "is a symlink" in res.out


def test_help(ddiff) -> None:
    res = ddiff("report", "--help")
    assert res.rc == 0 and "--metric" in res.out and "--samples" in res.out and "RUN_DIR/report" in res.out
    res = ddiff("--help")
    assert res.rc == 0 and "report" in res.out


def test_extreme_values_do_not_break_the_plot(tmp_path: Path) -> None:
    run = _bare_run(tmp_path)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 0, "loss": 1e308, "train_elbo_diffusion_bpd": -1e308}, {"step": 10**15, "loss": 1e-308},
        {"step": 5, "loss": 0.0, "val_nll_bits_per_dim": 2.0})))
    _quality(run / "quality", "a", "bridge", 1e308, {"tv": {"samples": 1e308, "reference": -1e308}})
    _quality(run / "quality", "b", "bridge", 0.0, {"tv": {"samples": -1.0, "reference": 0.0}})
    _, paths = rep.write_report(run)
    with Image.open(paths["png"]) as img:
        img.load()
        assert img.size == page_size(True)


def test_nice_ticks() -> None:
    from discrete_diffusion.report.plots import nice_ticks

    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(3.3, 3.9) == pytest.approx([3.4, 3.6, 3.8])  # range / 5 = 0.12: steps of 0.2
    assert nice_ticks(-7.0, 12.0) == pytest.approx([-5.0, 0.0, 5.0, 10.0])


@pytest.mark.parametrize("shape", [(0, 8, 8), (3, 0, 8), (64, 1024, 1024)])
def test_empty_or_huge_sample_arrays_become_notes(tmp_path: Path, shape: tuple[int, ...]) -> None:
    run = _bare_run(tmp_path)
    (run / "samples").mkdir()
    np.save(run / "samples" / "s.npy", np.zeros(shape, dtype=np.uint8))
    view = rep.read_samples(run)
    assert view.kind == "missing" and view.grid is None
    assert any(("holds no samples" in n) or ("take over 16.0 MiB" in n) for n in view.notes), view.notes


def test_quality_table_columns_are_bounded(tmp_path: Path) -> None:
    run = _bare_run(tmp_path)
    for i in range(rep.MAX_TABLE_METRICS + 6):
        _quality(run / "quality", f"q{i:03d}", "bridge", float(i + 1), {f"m{i}": {"samples": 1.0, "reference": 1.0}})
    report = rep.build_report(run)
    assert report.metric is None and any("share no metric" in n for n in report.notes)
    page = rep.render_html(report, rep.render_png(report))
    assert f"{rep.MAX_TABLE_METRICS + 6} metric names; the table shows the first {rep.MAX_TABLE_METRICS}" in page
    assert "m63 (samples)" in page and "m64 (samples)" not in page


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    run = _bare_run(tmp_path)
    os.mkfifo(run / "metrics.jsonl")  # opening it for reading would block forever without O_NONBLOCK
    report = rep.build_report(run)
    assert report.metrics is None and any("is not a regular file" in n for n in report.notes)
