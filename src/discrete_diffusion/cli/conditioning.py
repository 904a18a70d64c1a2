"""``ddiff sample``'s conditioning options (--class, --guidance, --infill/--mask, --prompt) read into a
:class:`~discrete_diffusion.pipeline.Conditioning`, and the file-name suffix that records them."""

from __future__ import annotations

import argparse
import re
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
    array = parse_npy(bytearray(p.read_bytes()), 8 * MAX_INFILL_BYTES, f"{flag} {path}")
    if array.dtype.kind == "u" and array.size:    # uint64 2^64-1 would wrap to -1 in int64
        import numpy as np

        top = int(array.max())
        if top > np.iinfo(np.int64).max:
            raise ValueError(f"{flag} {path}: value {top} is beyond the int64 range (states are 0..num_states-1)")
        array = array.astype(np.int64)
    return array


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
                elif re.fullmatch(r"-?[0-9]{1,18}", part):   # ASCII digits only ('²' is no class), no overflow
                    classes.append(int(part))
                elif re.fullmatch(r"-?[0-9]+", part):
                    raise ValueError(f"--class {part} is out of range: a class is an index 0..C-1 of the run's C "
                                     "classes")
                else:
                    raise ValueError(f"--class takes integers, lists such as 3,5, or 'all'; got {part!r}")
        if not run.denoiser.num_classes and getattr(args, "classifier", None) is None:
            raise ValueError("--class needs a class-conditional run; this run is unconditional "
                             "(model.num_classes = 0): "
                             "train one, or guide with --classifier DIR from `ddiff train-classifier`")
    known = values = None
    if args.prompt is not None:
        if args.infill is not None or args.mask is not None:
            raise ValueError("--prompt and --infill/--mask both say what is known: give one of them")
        vocab = run.dataset.metadata.get("vocab")
        sites = tuple(run.dataset.site_shape)
        if run.dataset.metadata.get("tokenizer") is not None or run.dataset.metadata.get("tokenizer_json"):
            raise ValueError("--prompt takes characters of a character-level text run; this run's text is BPE tokens "
                             "(data.tokenizer=bpe), whose token ids a template of characters cannot place: give "
                             "the known token ids with --infill KNOWN.npy --mask MASK.npy")
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


def conditioning_suffix(conditioning, num_classes: int = 0) -> str:
    """File-name part of the conditioning: _class3 for one class; _classes for every class in turn (--class all,
    or the list 0,1,...,C-1), else the list itself (_classes0-1 for --class 0,1; a list longer than 60 characters
    as _classesN-HASH); _clf (_clf-taylor) for classifier guidance, _g2 for the guidance scale (all its digits
    when %g would round it), _infill. Distinct class lists get distinct names (issue 19 item 10)."""
    import hashlib

    out = ""
    classes = conditioning.classes
    if classes is not None:
        if len(set(classes)) == 1:
            out += f"_class{classes[0]}"
        elif num_classes and list(classes) == list(range(num_classes)):
            out += "_classes"
        else:
            text = "-".join(str(c) for c in classes)
            if len(text) > 60:
                text = f"{len(classes)}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
            out += f"_classes{text}"
    if getattr(conditioning, "classifier", None) is not None:
        out += "_clf" + ("-taylor" if conditioning.guidance_form == "taylor" else "")
    if conditioning.guidance != 1.0:
        short = f"{conditioning.guidance:g}"
        out += f"_g{short if float(short) == conditioning.guidance else repr(float(conditioning.guidance))}"
    return out + ("_infill" if conditioning.known is not None else "")
