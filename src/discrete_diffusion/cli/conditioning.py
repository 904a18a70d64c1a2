"""``ddiff sample``'s conditioning options (--class, --guidance, --infill/--mask, --prompt) read into a
:class:`~discrete_diffusion.pipeline.Conditioning`, and the file-name suffix that records them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy

#: Largest --infill / --mask file read (bytes): a site grid of the run's shape is far smaller.
MAX_INFILL_BYTES = 1 << 26


def _load_site_array(path: str, flag: str) -> "numpy.ndarray":
    """An .npy array of a bounded size, read by the library's pickle-free reader (ValueError naming the flag)."""
    from ..data.npy_reader import parse_npy

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    if p.stat().st_size > MAX_INFILL_BYTES:
        raise ValueError(f"{flag} {path} is larger than {MAX_INFILL_BYTES} bytes; it should hold one site grid")
    return parse_npy(bytearray(p.read_bytes()), 8 * MAX_INFILL_BYTES, f"{flag} {path}")


def conditioning_from_args(args: argparse.Namespace, run):
    """The pipeline.Conditioning of --class, --guidance, --infill/--mask and --prompt (ValueError, one line)."""
    import torch

    from ..pipeline import Conditioning

    classes = None
    if args.classes:
        classes = []
        for item in args.classes:
            for part in str(item).split(","):
                part = part.strip()
                if part == "all":
                    if not run.denoiser.num_classes:
                        raise ValueError("--class all needs a class-conditional run; this run is unconditional "
                                         "(model.num_classes = 0)")
                    classes += list(range(run.denoiser.num_classes))
                elif part.lstrip("-").isdigit():
                    classes.append(int(part))
                else:
                    raise ValueError(f"--class takes integers, lists such as 3,5, or 'all'; got {part!r}")
        if not run.denoiser.num_classes and getattr(args, "classifier", None) is None:
            raise ValueError("--class needs a class-conditional run; this run is unconditional (model.num_classes = 0): "
                             "train one, or guide with --classifier DIR from `ddiff train-classifier`")
    known = values = None
    if args.prompt is not None:
        if args.infill is not None or args.mask is not None:
            raise ValueError("--prompt and --infill/--mask both say what is known: give one of them")
        vocab = run.dataset.metadata.get("vocab")
        sites = tuple(run.dataset.site_shape)
        if vocab is None or len(sites) != 1:
            raise ValueError("--prompt is for text runs (a vocabulary and one sequence axis); use --infill/--mask")
        if len(args.prompt) > sites[0]:
            raise ValueError(f"--prompt has {len(args.prompt)} characters, more than seq_len = {sites[0]}")
        index = {symbol: i for i, symbol in enumerate(vocab)}
        missing = sorted({ch for ch in args.prompt if ch != "_" and ch not in index})
        if missing:
            raise ValueError(f"--prompt characters not in the run's vocabulary: {''.join(missing)!r}")
        values = torch.zeros(sites, dtype=torch.long)
        known = torch.zeros(sites, dtype=torch.bool)
        for i, ch in enumerate(args.prompt):
            if ch != "_":
                values[i], known[i] = index[ch], True
    elif args.infill is not None or args.mask is not None:
        if args.infill is None or args.mask is None:
            raise ValueError("infilling needs both --infill KNOWN.npy and --mask MASK.npy")
        values = torch.from_numpy(_load_site_array(args.infill, "--infill").copy())
        known = torch.from_numpy(_load_site_array(args.mask, "--mask").copy())
    guidance = 1.0 if args.guidance is None else float(args.guidance)
    classifier = None
    if getattr(args, "classifier", None) is not None:
        from ..guidance.classifier_train import load_classifier

        classifier = load_classifier(args.classifier, run)
    return Conditioning(classes=classes, guidance=guidance, known=known, values=values, classifier=classifier,
                        guidance_form=getattr(args, "guidance_form", "exact"))


def conditioning_suffix(conditioning) -> str:
    """File-name part of the conditioning: _class3 (or _classes for several), _clf (_clf-taylor) for classifier
    guidance, _g2 for the guidance scale, _infill."""
    out = ""
    if conditioning.classes is not None:
        out += f"_class{conditioning.classes[0]}" if len(set(conditioning.classes)) == 1 else "_classes"
    if getattr(conditioning, "classifier", None) is not None:
        out += "_clf" + ("-taylor" if conditioning.guidance_form == "taylor" else "")
    if conditioning.guidance != 1.0:
        out += f"_g{conditioning.guidance:g}"
    return out + ("_infill" if conditioning.known is not None else "")
