"""Loading weights never executes code: a crafted pickle with a code-running payload, planted under every
name a checkpoint could have, is refused by every loading path without running its payload."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from discrete_diffusion.pipeline import load_run
from discrete_diffusion.runs.weights import find_latest_checkpoint, load_model_weights, safe_torch_load
from discrete_diffusion.train.checkpoint import load_checkpoint


class Payload:
    """Unpickling this runs ``exec``, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"model.weight": Payload(marker)}, protocol=2)


def malicious_torch_file(path: Path, marker: Path) -> None:
    """A ``torch.save``-format zip whose data.pkl is the payload (written without calling torch.save)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", malicious_pickle(marker))
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")


def test_payload_is_live(tmp_path):
    """Guard for the tests below: the payload really runs when something unpickles it."""
    marker = tmp_path / "marker"
    blob = tmp_path / "blob.pkl"
    blob.write_bytes(malicious_pickle(marker))
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(blob)!r}, 'rb'))"], check=False,
                   capture_output=True, timeout=60)
    assert marker.read_text() == "pwned"
    marker.unlink()
    pt = tmp_path / "evil.pt"
    malicious_torch_file(pt, marker)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(pt)!r}, weights_only=False)"],
                   check=False, capture_output=True, timeout=120)
    assert marker.read_text() == "pwned"


def plant(directory: Path, marker: Path, step: int = 99, config: dict | None = None) -> None:
    """Every file name a checkpoint can have, each holding the payload; one manifest is well-formed and
    names a "safetensors" file that is really the pickle, with its correct SHA-256."""
    directory.mkdir(parents=True, exist_ok=True)
    evil = malicious_pickle(marker)
    tensors_name = f"ckpt_{step:08d}.{hashlib.sha256(evil).hexdigest()[:12]}.safetensors"
    (directory / tensors_name).write_bytes(evil)
    manifest = {"format": "discrete_diffusion.checkpoint", "format_version": 1, "step": step,
                "tensors_file": tensors_name, "tensors_sha256": hashlib.sha256(evil).hexdigest(),
                "rng": {}, "config": config, "ema": None, "optimizer": None, "scheduler": None, "extra": {}}
    (directory / f"ckpt_{step:08d}.json").write_text(json.dumps(manifest))
    (directory / f"ckpt_{step + 1:08d}.json").write_bytes(evil)  # a pickle posing as the newest manifest
    malicious_torch_file(directory / f"ckpt_{step + 2:08d}.pt", marker)
    malicious_torch_file(directory / "model.pt", marker)


def test_library_loaders_refuse_planted_pickles(tmp_path, trained_run):
    marker = tmp_path / "marker"
    ckpts = tmp_path / "ckpts"
    plant(ckpts, marker)
    run = load_run(trained_run, "latest", "cpu")
    latest = find_latest_checkpoint(ckpts)  # skips the pickle posing as a manifest
    assert latest is not None and latest.name == "ckpt_00000099.json"
    for load in (lambda p: load_checkpoint(p, run.denoiser), lambda p: load_model_weights(p, run.denoiser)):
        for path in (ckpts, latest, ckpts / "ckpt_00000100.json"):
            with pytest.raises(ValueError, match=r"not a safetensors file|corrupt checkpoint manifest"):
                load(path)
    for pt in (ckpts / "ckpt_00000101.pt", ckpts / "model.pt"):
        with pytest.raises(ValueError, match="refusing to load"):
            safe_torch_load(pt)
    assert not marker.exists()


def test_safe_torch_load_reads_plain_tensors(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.arange(3.0)}, path)
    assert torch.equal(safe_torch_load(path)["w"], torch.arange(3.0))


@pytest.mark.parametrize("command", ["sample", "evaluate"])
@pytest.mark.parametrize("which", ["best", "latest"])
def test_cli_refuses_run_with_planted_pickles(ddiff, trained_run, tmp_path, command, which):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    real = json.loads(find_latest_checkpoint(run / "checkpoints").read_text())
    for sub in ("best", "checkpoints"):
        plant(run / sub, marker, config=real["config"])  # passes the config check: only the tensors are evil
    extra = ["--out", tmp_path / "out", "--num", "2", "--steps", "2"] if command == "sample" else ["--t-samples", "1"]
    res = ddiff(command, run, "--checkpoint", which, *extra, "--no-progress")
    assert res.rc == 2, res
    assert "not a safetensors file" in res.err and "Traceback" not in res.err
    assert not marker.exists()
