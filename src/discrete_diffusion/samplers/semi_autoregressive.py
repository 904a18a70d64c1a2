"""Semi-autoregressive decoding of a block-diffusion model: one block at a time, any masking sampler inside a block,
the finished blocks' keys and values in an exact KV cache, prompts as clean context, stop at EOS.

Reference: Arriola et al., "Block Diffusion: Interpolating Between Autoregressive and Diffusion Language Models"
(BD3-LM), ICLR 2025, Algorithm 2 (block-by-block sampling with a KV cache) and section 5.3 (arbitrary-length
generation: stop at EOS, slide the context).

The interface between decoding and a sampler is the block denoiser: for block b the model hands out
``model.context_denoiser(context, cache)``, a plain ``Denoiser`` over the block's B_s sites given the clean context,
and the sampler runs ``sample(process, that_denoiser, schedule, (B, B_s), start=(x_init, 1))`` on it as on any
sequence, where x_init is MASK except for prompt tokens that fall inside the block. Any masking sampler therefore
works inside a block (bridge, exact, maskgit, remdm, tau-leaping, euler, theta-*, the ``cache`` option).

The rules (docs/block-diffusion.md):

- Blocks are aligned at multiples of B_s from the start of the stream (the prompt's first token). The prompt's whole
  blocks are context (encoded into the cache by one forward); its last partial block, if any, is the first block to
  decode, with the prompt tokens already unmasked in x_init (SUBS keeps them).
- Context window: the model was trained on L positions, so a block sees at most L - B_s context tokens. When the
  context would exceed that, it slides: the last ``context`` tokens (a multiple of B_s; default the largest multiple
  of B_s <= L / 2, and at most L - B_s) are kept, re-numbered from position 0 and re-encoded by one forward. The
  uncached path recomputes exactly that window at every step, so cached and uncached decoding agree to float
  rounding at every length (tested).
- After a block is finished its clean tokens enter the cache by one forward (they attend to the cache and to
  themselves: the block-causal mask the clean copy was trained with).
- Length: ``max_length`` tokens in all, prompt included (default L). With ``eos`` set, a row stops at its first
  EOS after the prompt: its length counts the EOS, every later position is set to ``pad`` (default: EOS) and
  ``stopped`` says so; decoding ends early once every row has stopped (rows that stopped keep being decoded until
  then, so that a row's draws do not depend on when the others stop).
- ``batch_invariant=True`` decodes each row alone with its own generator seeded by (seed, row): a row's tokens then
  depend only on its prompt, the seed and its index, never on the other rows (B times the network calls of batch 1).
  In the default batched mode a row's network predictions do not depend on the other rows (to float rounding), but
  its random draws come from one stream shared by the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..processes.base import ForwardProcess
from ..schedules import Schedule
from .base import Sampler

__all__ = ["BlockSamples", "SemiAutoregressiveDecoder"]

#: callback(tokens_done, tokens_total) after every block.
BlockCallback = Callable[[int, int], None]


@dataclass
class BlockSamples:
    """tokens (B, T) long, prompt included; lengths (B,) long: the tokens of each row up to and including its EOS,
    else T; stopped (B,) bool: the row ended at EOS (positions >= its length hold the pad value); prompt_length P;
    network_calls: sampler calls plus cache forwards."""

    tokens: Tensor
    lengths: Tensor
    stopped: Tensor
    prompt_length: int
    network_calls: int = 0


class SemiAutoregressiveDecoder:
    """Decode a block-diffusion model (``BlockNetworkDenoiser``, ``BlockOracle``) with ``sampler`` inside each block.

    Args:
        sampler: a masking sampler, run on each block (its ``num_steps`` are per block).
        use_cache: keep the context's keys and values (exact; False recomputes the context at every network call).
        max_length: total tokens T, prompt included (default: the model's length L).
        eos: the end-of-sequence token id, or None (decode to max_length).
        pad: the value after a row's EOS (default: eos).
        context: tokens kept when the context slides (a multiple of the block size; see the module docstring).
        batch_invariant: decode each row alone with its own generator (module docstring).
    """

    def __init__(self, sampler: Sampler, use_cache: bool = True, max_length: int | None = None,
                 eos: int | None = None, pad: int | None = None, context: int | None = None,
                 batch_invariant: bool = False) -> None:
        if max_length is not None and int(max_length) < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.sampler, self.use_cache = sampler, bool(use_cache)
        self.max_length = None if max_length is None else int(max_length)
        self.eos, self.pad = eos, (eos if pad is None else pad)
        self.context, self.batch_invariant = context, bool(batch_invariant)
        self.network_calls = 0

    def _keep(self, length: int, block_size: int) -> int:
        most = length - block_size
        keep = (length // 2) // block_size * block_size if self.context is None else int(self.context)
        if keep % block_size or not 0 <= keep <= most:
            raise ValueError(f"context {keep} must be a multiple of the block size {block_size} in 0..{most}")
        return min(keep, most)

    @torch.no_grad()
    def sample(self, process: ForwardProcess, model, schedule: Schedule, batch: int, prompt: Tensor | None = None,
               generator: torch.Generator | None = None, device: torch.device | str | None = None,
               labels: Tensor | None = None, callback: BlockCallback | None = None, seed: int = 0) -> BlockSamples:
        """Decode ``batch`` rows after ``prompt`` ((P,) for every row, or (B, P); None = no prompt). ``seed`` is used
        only with ``batch_invariant`` (row i's generator is seeded with seed + i)."""
        device = torch.device(device) if device is not None else (
            generator.device if generator is not None else torch.device("cpu"))
        if process.name != "masking" or not self.sampler.supports(process):
            raise ValueError(f"semi-autoregressive decoding runs a masking sampler on the masking process, got "
                             f"sampler {self.sampler.name!r} on {process.name!r}")
        if prompt is None:
            prompt = torch.zeros(batch, 0, dtype=torch.long)
        prompt = torch.as_tensor(prompt).long()
        prompt = prompt[None].expand(batch, -1) if prompt.dim() == 1 else prompt
        if prompt.dim() != 2 or prompt.shape[0] != batch:
            raise ValueError(f"prompt must have shape (P,) or ({batch}, P), got {tuple(prompt.shape)}")
        if prompt.numel() and (int(prompt.min()) < 0 or int(prompt.max()) >= process.num_states):
            raise ValueError(f"prompt tokens must lie in 0..{process.num_states - 1}")
        total = self.max_length or model.length
        if prompt.shape[1] >= total:
            raise ValueError(f"the prompt has {prompt.shape[1]} tokens; max_length {total} leaves none to generate")
        if not self.batch_invariant:
            return self._decode(process, model, schedule, prompt.to(device), generator, device, labels, callback, total)
        parts = []
        for row in range(batch):
            g = torch.Generator(device=device).manual_seed(seed + row)
            parts.append(self._decode(process, model, schedule, prompt[row:row + 1].to(device), g, device,
                                      None if labels is None else labels[row:row + 1], callback, total))
        calls = sum(p.network_calls for p in parts)
        width = max(p.tokens.shape[1] for p in parts)
        tokens = torch.full((batch, width), self.pad if self.pad is not None else 0, dtype=torch.long, device=device)
        for row, p in enumerate(parts):
            tokens[row, :p.tokens.shape[1]] = p.tokens[0]
        self.network_calls = calls
        return BlockSamples(tokens, torch.cat([p.lengths for p in parts]), torch.cat([p.stopped for p in parts]),
                            prompt.shape[1], calls)

    def _decode(self, process: ForwardProcess, model, schedule: Schedule, prompt: Tensor,
                generator: torch.Generator | None, device: torch.device, labels: Tensor | None,
                callback: BlockCallback | None, total: int) -> BlockSamples:
        batch, prompt_length = prompt.shape
        size, length = model.block_size, model.length
        keep = self._keep(length, size)
        mask = process.mask_index
        stream = prompt[:, :prompt_length // size * size]
        window = 0                                          # the stream index where the context window starts
        if stream.shape[1] > length - size:                 # a long prompt: start from its last `keep` tokens
            window = stream.shape[1] - keep
        cache, calls = None, 0
        if self.use_cache and stream.shape[1] > window:
            cache, calls = model.encode(stream[:, window:], labels), calls + 1
        stopped = torch.zeros(batch, dtype=torch.bool, device=device)
        while stream.shape[1] < total:
            position = stream.shape[1]
            if position - window + size > length:            # slide: keep the last `keep` tokens, re-encode them
                window = position - keep
                cache = None
                if self.use_cache and keep:
                    cache, calls = model.encode(stream[:, window:], labels), calls + 1
            x_init = torch.full((batch, size), mask, dtype=torch.long, device=device)
            given = prompt[:, position:position + size]     # prompt tokens inside this block (a partial block)
            x_init[:, :given.shape[1]] = given
            denoiser = model.context_denoiser(stream[:, window:], cache if self.use_cache else None, labels)
            block = self.sampler.sample(process, denoiser, schedule, (batch, size), generator, device,
                                        start=(x_init, 1.0))
            calls += self.sampler.network_calls
            stream = torch.cat([stream, block], dim=1)
            if self.use_cache and stream.shape[1] < total:
                cache = model.encode(block, labels, past=cache)          # None: the window starts at this block
                calls += 1
            if self.eos is not None:  # only the tokens that will be returned count (the last block may run past)
                stopped = (stream[:, prompt_length:total] == self.eos).any(1)
            if callback is not None:
                callback(min(stream.shape[1], total), total)
            if self.eos is not None and bool(stopped.all()):
                break
        stream = stream[:, :total]
        lengths = torch.full((batch,), stream.shape[1], dtype=torch.long, device=device)
        if self.eos is not None:
            is_eos = stream[:, prompt_length:] == self.eos
            first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + prompt_length + 1, lengths)
            lengths = first
            after = torch.arange(stream.shape[1], device=device)[None, :] >= lengths[:, None]
            stream = stream.masked_fill(after, self.pad)
        self.network_calls = calls
        return BlockSamples(stream, lengths, stopped, prompt_length, calls)
