"""
Text with block diffusion and a prompt
======================================

Block diffusion (BD3-LM) cuts a sequence into blocks of B tokens: the model is autoregressive over blocks and a
masked diffusion inside each block. Training is one forward over the noisy and the clean copy of the sequence;
sampling fills one block at a time, keeps the finished blocks' keys and values in an exact KV cache, continues
a prompt, and can run past the training length by sliding the context. Here a small character model learns a
tiny made-up corpus in a few hundred steps (``docs/block-diffusion.md`` has the real-text numbers).
"""

# %%
# A corpus with structure a small model can learn quickly: short sentences from a fixed grammar.
import tempfile
from pathlib import Path

import torch

from discrete_diffusion.cli import main as ddiff

torch.manual_seed(0)
work = Path(tempfile.mkdtemp())
g = torch.Generator().manual_seed(0)
subjects, verbs, objects = (["the cat", "a dog", "the bird"], ["sees", "likes", "finds"],
                            ["the mat", "a bone", "the tree"])
pick = lambda words: words[int(torch.randint(len(words), (1,), generator=g))]  # noqa: E731
corpus = "".join(f"{pick(subjects)} {pick(verbs)} {pick(objects)}. " for _ in range(4000))
(work / "corpus.txt").write_text(corpus)
print(corpus[:120])

# %%
# Train masked diffusion with blocks of 4 characters (``model.block_size=4``) and a noise-level-free network
# (``model.time_conditioning=false``, as MDLM and BD3-LM train), then report the test bound in bits/char.
run = work / "run"
assert ddiff(["train", "--out", str(run), "--no-progress", "data.name=text", f"data.path={work / 'corpus.txt'}",
              "data.seq_len=32", "process.name=masking", "model.backbone=transformer", "model.dim=64",
              "model.depth=2", "model.block_size=4", "model.time_conditioning=false", "train.steps=400",
              "train.batch_size=32", "train.eval_every=400", "train.checkpoint_every=400",
              "train.sample_every=100000", "train.eval_t_samples=2", "train.device=cpu"]) == 0
assert ddiff(["evaluate", str(run), "--device", "cpu", "--no-progress", "--t-samples", "2"]) == 0

# %%
# Continue a prompt for 64 characters, twice the training length (the context slides), with the KV cache;
# the same seed without the cache gives the same text.
out = work / "samples"
for flag in ([], ["--no-cache"]):
    assert ddiff(["sample", str(run), "--prompt", "the cat ", "--max-length", "64", "--num", "4", "--steps", "8",
                  "--seed", "1", "--device", "cpu", "--no-progress",
                  "--out", str(out / (flag[0] if flag else "cached")), *flag]) == 0
texts = {name: next((out / name).glob("*.txt")).read_text() for name in ("cached", "--no-cache")}
print(texts["cached"])
print("identical with and without the cache:", texts["cached"] == texts["--no-cache"])
