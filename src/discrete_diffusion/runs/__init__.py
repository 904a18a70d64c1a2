"""The run directory: everything that reads or writes ``RUN_DIR`` (docs/fault-tolerance.md).

- :mod:`.atomic_io`: atomic, link-refusing writes and bounded reads;
- :mod:`.lock`: the training lock (``RUN/.lock``);
- :mod:`.checkpoint_files`, :mod:`.weights`, :mod:`.tensors`: checkpoint files and manifests, loading weights;
- :mod:`.state_codec`: the pickle-free JSON codec of non-tensor state;
- :mod:`.data_record`: ``data.json`` (checksums of the data a run was trained on);
- :mod:`.config_file`, :mod:`.tokenizer_file`: ``config.yaml`` and ``tokenizer.json``;
- :mod:`.results`: a finished companion run's validation curve and exported weights;
- :mod:`.load`: :func:`load_run` / :class:`LoadedRun`, a model rebuilt from the directory alone.

Training's checkpoint policy (what state a checkpoint holds) is :mod:`discrete_diffusion.train.checkpoint`.
"""

from .load import LoadedRun, find_weights, load_run, write_json

__all__ = ["LoadedRun", "find_weights", "load_run", "write_json"]
