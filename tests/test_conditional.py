"""Labels through the pipeline (issue 12 item 1): class embeddings in the backbones, labels and cond_dropout in
training (bit-exact resume), conditional validation, checkpoints (old unconditional ones keep loading), and the
sampling options of ``ddiff sample`` (--class, --guidance, --infill/--mask) with their one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, with_overrides

from discrete_diffusion.cli import main
from discrete_diffusion.config import load_config
from discrete_diffusion.data.arrays import load_array_file
from discrete_diffusion.denoiser import ConditionalDenoiser
from discrete_diffusion.nn import MLP, SequenceTransformer, UNet
from discrete_diffusion.pipeline import Conditioning, generate_samples, load_run
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
#: The main-line commit before conditioning existed: its runs have no model.num_classes in their config.
BEFORE_CONDITIONING = "b79d73c"
COND = ["process.name=masking", "model.num_classes=null", "train.cond_dropout=0.25"]


def backbones(num_classes: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"mlp": MLP(4, 3, (5,), hidden=16, depth=1, num_classes=num_classes),
            "transformer": SequenceTransformer(4, 3, 5, dim=16, depth=1, heads=2, num_classes=num_classes),
            "unet": UNet(4, 3, (4, 4), base_channels=8, channel_mults=(1,), num_classes=num_classes)}


@pytest.mark.parametrize("name", ["mlp", "transformer", "unet"])
def test_backbone_class_embedding(name):
    """An unconditional backbone has exactly the parameters it had before (no class table) and refuses labels; a
    conditional one has C + 1 rows (null class last), its output depends on the label, and labels=None is the
    null class."""
    plain, cond = backbones(0)[name], backbones(3)[name].eval()
    assert not any("class_embedding" in k for k in plain.state_dict())
    extra = {k: v for k, v in cond.state_dict().items() if k not in plain.state_dict()}
    assert list(extra) == ["class_embedding.table.weight"] and extra["class_embedding.table.weight"].shape[0] == 4
    for p in cond.parameters():               # the output head is zero at init: perturb every weight
        torch.nn.init.normal_(p, std=0.3) if p.dim() > 1 else None
    shape = (2, 4, 5) if name != "unet" else (2, 4, 4, 4)
    x, level = torch.randn(shape), torch.zeros(2)
    out = [cond(x, level, torch.tensor([c, c])) for c in range(4)]
    assert not torch.allclose(out[0], out[1])
    assert torch.equal(cond(x, level), out[3])
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, level, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in 0..3"):
        cond(x, level, torch.tensor([0, 4]))


def test_npz_with_x_and_y_gives_labels(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 4, (40, 6)), y=np.arange(40) % 5)
    dataset = load_array_file(path)
    assert dataset.train_labels is not None and dataset.val_labels is not None
    assert int(torch.cat([dataset.train_labels, dataset.val_labels, dataset.test_labels]).max()) == 4


def test_labels_reach_batches_and_cond_dropout(tmp_path):
    """The batch labels are the dataset's labels of the drawn examples; cond_dropout replaces a fraction by the
    null class (num_classes); num_classes=null is inferred (10 digits)."""
    config = load_config(overrides=with_overrides(*COND, "train.cond_dropout=0.5", "train.batch_size=400"))
    trainer = Trainer(config, tmp_path / "run", progress=False)
    assert trainer.num_classes == 10 and trainer.denoiser.num_classes == 10
    state = trainer.data_generator.get_state()
    x0, labels = trainer._next_batch()
    trainer.data_generator.set_state(state)
    index = torch.randperm(trainer.train_data.shape[0], generator=trainer.data_generator)[:400]
    assert torch.equal(x0, trainer.train_data[index])
    kept = labels != 10
    assert torch.equal(labels[kept], trainer.dataset.train_labels[index][kept])
    assert 0.4 < float((~kept).float().mean()) < 0.6


def test_unconditional_batches_are_unchanged(tmp_path):
    """An unconditional run draws exactly the batch of the original code (the same generator stream)."""
    trainer = Trainer(load_config(overrides=TINY), tmp_path / "run", progress=False)
    generator = torch.Generator().manual_seed(trainer.config.train.seed + 1)
    x0, labels = trainer._next_batch()
    assert labels is None
    assert torch.equal(x0, trainer.train_data[torch.randperm(trainer.train_data.shape[0], generator=generator)[:8]])


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    import json

    from safetensors.torch import load_file

    from discrete_diffusion.runs.weights import find_latest_checkpoint

    manifest = find_latest_checkpoint(run_dir / "checkpoints")
    return load_file(str(manifest.parent / json.loads(manifest.read_text())["tensors_file"]))


def test_conditional_resume_is_bit_exact(tmp_path):
    """cond_dropout draws come from the data generator: 4 steps + resume to 8 = 8 straight steps, bit for bit."""
    ref = with_overrides(*COND, "train.steps=8", "train.checkpoint_every=4", "train.eval_every=4",
                         "train.sample_every=100", "train.min_lr_ratio=1.0")
    assert main(["train", "--out", str(tmp_path / "a"), "--no-progress", *ref]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), "--no-progress",
                 *with_overrides("train.steps=4", base=ref)]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), "--no-progress", "--resume", "train.steps=8"]) == 0
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert sorted(a) == sorted(b) and "model.backbone.class_embedding.table.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("model.", "ema.")))


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cond") / "run"
    assert main(["train", "--out", str(run), "--no-progress", *with_overrides(*COND)]) == 0
    return run


def test_conditional_run_samples_every_class(cond_run, ddiff, tmp_path):
    """--class all: one class per row, cycling; --class 3 --guidance 2 writes its own files and the JSON records it.
    A batch of mixed classes is drawn one sampler call per class (each bound to one class), so it works with the
    exact sampler too, which evaluates subsets of rows."""
    res = ddiff("sample", cond_run, "--class", "3", "--guidance", "2", "--num", "4", "--steps", "3", "--out", tmp_path,
                "--no-progress")
    assert res.rc == 0, res.err
    assert (tmp_path / "bridge_3steps_seed0_class3_g2.npy").is_file()
    assert '"guidance": 2.0' in (tmp_path / "bridge_3steps_seed0_class3_g2.json").read_text()
    run = load_run(cond_run, device="cpu")
    for name in ("bridge", "exact"):
        sampler = build_sampler(name, num_steps=3)
        mixed = generate_samples(run, sampler, 20, 20, seed=1, progress=False,
                                 conditioning=Conditioning(classes=list(range(10))))
        assert mixed.shape == (20, 8, 8)
    res = ddiff("sample", cond_run, "--class", "all", "--num", "20", "--steps", "3", "--out", tmp_path, "--no-progress")
    assert res.rc == 0 and (tmp_path / "bridge_3steps_seed0_classes.png").is_file()


def test_conditional_infill_keeps_known_pixels(cond_run, ddiff, tmp_path):
    known = np.arange(64).reshape(8, 8) % 17
    mask = np.zeros((8, 8), dtype=bool)
    mask[:3] = True
    np.save(tmp_path / "known.npy", known)
    np.save(tmp_path / "mask.npy", mask)
    res = ddiff("sample", cond_run, "--class", "1", "--infill", tmp_path / "known.npy", "--mask", tmp_path / "mask.npy",
                "--num", "3", "--steps", "3", "--out", tmp_path, "--no-progress")
    assert res.rc == 0, res.err
    x = np.load(tmp_path / "bridge_3steps_seed0_class1_infill.npy")
    assert (x[:, mask] == known[mask]).all()


def test_sample_errors_one_line(cond_run, trained_run, ddiff, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((7, 8), dtype=bool))
    np.save(tmp_path / "ok.npy", np.zeros((8, 8), dtype=np.int64))
    cases = [
        ((cond_run, "--class", "10"), "unknown class 10: this model has classes 0..9"),
        ((cond_run, "--class", "x"), "--class takes integers"),
        ((cond_run, "--guidance", "2"), "--guidance needs --class"),
        ((trained_run, "--class", "3", "--guidance", "2"), "unconditional"),
        ((trained_run, "--guidance", "2"), "guidance needs a class-conditional run"),
        ((cond_run, "--infill", tmp_path / "ok.npy", "--mask", tmp_path / "bad.npy"), "must both have the run's site"),
        ((cond_run, "--infill", tmp_path / "ok.npy"), "needs both --infill"),
        ((cond_run, "--prompt", "ab_"), "--prompt is for text runs"),
    ]
    for args, message in cases:
        res = ddiff("sample", *args, "--num", "2", "--steps", "2", "--out", tmp_path, "--no-progress")
        assert res.rc != 0 and message in res.err, (args, res.err)
        assert len(res.err.strip().splitlines()) == 1, res.err


def test_unconditional_checkpoint_from_main_loads_unchanged(tmp_path):
    """A run trained by the code before conditioning (main at BEFORE_CONDITIONING), without model.num_classes in its
    config, loads and samples; the rebuilt denoiser is unconditional and predicts bit for bit what the old code
    predicts from the same checkpoint."""
    src = tmp_path / "main_src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_CONDITIONING, "src"], capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    run = tmp_path / "old"
    env = {**os.environ, "PYTHONPATH": str(src / "src"), "OMP_NUM_THREADS": "1"}
    code = ("import sys, torch, numpy as np; from discrete_diffusion.cli import main; "
            "from discrete_diffusion.pipeline import load_run; out, run = sys.argv[1], sys.argv[4]; "
            "assert main(sys.argv[2:]) == 0; r = load_run(run, device='cpu'); "
            "xt = torch.arange(128).reshape(2, 8, 8) % 17; p = r.denoiser(xt, torch.tensor([-1.0, 2.0])); "
            "np.save(out, p.x0_log_probs.detach().numpy())")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "old.npy"), "train", "--out", str(run),
                           "--no-progress", *with_overrides("train.steps=2", "train.eval_every=2",
                                                            "train.checkpoint_every=2", "train.sample_every=100")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "num_classes" not in (run / "config.yaml").read_text()
    loaded = load_run(run, device="cpu")
    assert loaded.denoiser.num_classes == 0
    with torch.no_grad():
        new = loaded.denoiser(torch.arange(128).reshape(2, 8, 8) % 17, torch.tensor([-1.0, 2.0])).x0_log_probs
    assert torch.equal(new, torch.from_numpy(np.load(tmp_path / "old.npy")))
    x = build_sampler("bridge", num_steps=2).sample(loaded.process, loaded.denoiser, loaded.schedule, (2, 8, 8),
                                                    torch.Generator().manual_seed(0))
    assert x.shape == (2, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        ConditionalDenoiser(loaded.denoiser, 0)


def test_evaluate_conditional_run_scores_each_class(cond_run):
    """evaluate_run on a conditional run pools -log p(x | c) over the classes of the split: the pooled mean is the
    count-weighted mean of the per-class bounds, evaluated with each class bound."""
    from discrete_diffusion.pipeline import evaluate_run

    run = load_run(cond_run, device="cpu")
    result = evaluate_run(run, "val", t_samples=1, batch_size=64, progress=False)
    assert result.num_examples == run.dataset.val.shape[0]
    labels = run.dataset.val_labels
    assert torch.unique(labels).numel() > 1
    from discrete_diffusion.builders import build_proposal
    from discrete_diffusion.likelihood import evaluate_nll

    generator = torch.Generator().manual_seed(0)
    manual = sum(float((labels == c).sum()) * evaluate_nll(
        run.process, ConditionalDenoiser(run.denoiser, c), run.schedule, run.dataset.val[labels == c],
        build_proposal(run.config), 1, 64, generator).nll_bits_per_dim for c in torch.unique(labels).tolist())
    assert abs(result.nll_bits_per_dim - manual / labels.numel()) < 1e-9


def test_text_prompt_with_blanks(tmp_path, ddiff):
    """--prompt on an (unconditional) text run: the non-blank characters are kept at their positions; a character
    outside the vocabulary or a prompt longer than seq_len is a one-line error."""
    text = tmp_path / "t.txt"
    text.write_text("abcab cabba cab " * 200)
    run = tmp_path / "text"
    assert main(["train", "--out", str(run), "--no-progress", *with_overrides(
        "data.name=text", f"data.path={text}", "data.seq_len=8", "process.name=masking", "model.backbone=transformer",
        "model.dim=16", "model.depth=1", "model.heads=2", "train.steps=2", "train.eval_every=2",
        "train.checkpoint_every=2", "train.sample_every=100")]) == 0
    res = ddiff("sample", run, "--prompt", "ab_c__a", "--num", "3", "--steps", "3", "--out", tmp_path, "--no-progress")
    assert res.rc == 0, res.err
    lines = (tmp_path / "bridge_3steps_seed0_infill.txt").read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        assert line[:2] == "ab" and line[3] == "c" and line[6] == "a" and len(line) == 8
    for prompt, message in (("abz", "not in the run's vocabulary"), ("a" * 9, "more than seq_len = 8")):
        res = ddiff("sample", run, "--prompt", prompt, "--num", "2", "--out", tmp_path, "--no-progress")
        assert res.rc != 0 and message in res.err and len(res.err.strip().splitlines()) == 1, res.err


def test_png_folder_with_class_subfolders(tmp_path):
    """A png-folder of class subfolders yields labels (class c = the c-th subfolder name, sorted); a flat folder
    stays unlabelled; a validation folder with an unknown class is refused."""
    from PIL import Image

    from discrete_diffusion.data.png_folder import load_png_folder

    rng = np.random.default_rng(0)
    for name, count in (("b_dog", 12), ("a_cat", 8)):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(tmp_path / "train" / name / f"{i}.png")
    dataset = load_png_folder(tmp_path / "train", levels=4)
    labels = torch.cat([dataset.train_labels, dataset.val_labels, dataset.test_labels])
    assert dataset.metadata["classes"] == ["a_cat", "b_dog"]
    assert int((labels == 0).sum()) == 8 and int((labels == 1).sum()) == 12
    flat = load_png_folder(tmp_path / "train" / "a_cat")
    assert flat.train_labels is None
    (tmp_path / "val" / "c_cow").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(tmp_path / "val" / "c_cow" / "0.png")
    with pytest.raises(ValueError, match="not among the training classes"):
        load_png_folder(tmp_path / "train", val_path=tmp_path / "val")


def test_config_errors_for_conditioning(tmp_path):
    for override, message in (("train.cond_dropout=1.0", "train.cond_dropout must be a finite number in [0, 1)"),
                              ("model.num_classes=-1", "model.num_classes must be an integer in 0..")):
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            load_config(overrides=[override])
    with pytest.raises(ValueError, match="model.num_classes=5 but the dataset has labels up to 9"):
        Trainer(load_config(overrides=with_overrides("model.num_classes=5")), tmp_path / "r", progress=False)
    text = tmp_path / "t.txt"
    text.write_text("abc " * 100)
    with pytest.raises(ValueError, match="needs class labels, but dataset"):
        Trainer(load_config(overrides=with_overrides("model.num_classes=3", "data.name=text", f"data.path={text}",
                                                     "data.seq_len=4", "model.backbone=mlp")), tmp_path / "s",
                progress=False)
