"""The decode loop: many rows, one forward pass per step, per-row KV-cache reuse.

Why not ``model.generate``? It cannot mix rows that reuse different amounts of cached prompt,
it applies one set of sampling parameters to the whole batch, and it re-checks every logits
processor over the whole prompt each step. This loop is small and does exactly what the LLM stage
needs:

1. For each row, look up its session's cached prompt KV and reuse the longest common prefix.
2. Prefill: one forward over the batch. Row ``i`` reuses ``r_i`` cached tokens and encodes
   ``n_i`` new ones. The past is left-padded to ``P = max r_i`` and the new tokens to
   ``N = max n_i``, so a row reads ``[pad | cached r_i | pad | new n_i]``; the attention mask
   hides the pads and explicit position ids keep every real token at its true position, so a
   padded row computes what it would compute alone.
3. Store each row's prompt KV (pads dropped) for its session, then decode one token per step
   for all live rows; finished rows are dropped from the batch (their cache rows are selected
   away), so a long reply does not make 31 finished rows keep computing.

The batch's cache grows in place (:mod:`engine.llm.growing_cache`) and attention keeps grouped
query heads grouped (:mod:`engine.llm.attention`): both avoid copying every layer's keys and
values once per step, which dominated large batches.

The loop is a generator that yields after every step, so streaming and early stop are the same
code as a plain call: the caller reads each row's tokens and may close the generator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from engine.generation import GenerationParams
from engine.llm.growing_cache import GrowingCache
from engine.llm.kv_cache import KVLayers, SessionKVCache
from engine.llm.sampling import RowSampler


@dataclass
class DecodeRow:
    prompt: list[int]
    params: GenerationParams
    seed: int | None = None
    session_key: str | None = None
    deadline: float = float("inf")  # time.perf_counter() value
    generated: list[int] = field(default_factory=list)
    finish: str | None = None  # stop | length | deadline, once finished
    reused: int = 0  # prompt tokens taken from the session cache


StopCheck = Callable[[DecodeRow], bool]  # True: the row's text hit a stop string


def _padded_past(
    pasts: Sequence[KVLayers | None], reuse: Sequence[int], like: KVLayers, spare: int
) -> GrowingCache:
    """Left-pad each row's reused KV to the longest and stack them into one cache."""
    width = max(reuse)
    cache = GrowingCache(spare)
    for layer, (k0, v0) in enumerate(like):
        batch, heads, dim = len(pasts), k0.shape[1], k0.shape[3]
        keys = k0.new_zeros((batch, heads, width, dim))
        values = v0.new_zeros((batch, heads, width, dim))
        for row, past in enumerate(pasts):
            if past is not None and reuse[row]:
                k, v = past[layer]
                keys[row, :, width - reuse[row] :] = k[0]
                values[row, :, width - reuse[row] :] = v[0]
        cache.update(keys, values, layer)
    return cache


def _row_layers(cache: GrowingCache, row: int, keep: torch.Tensor) -> KVLayers:
    """Row ``row``'s KV at the positions ``keep`` (its real tokens), as owned tensors."""
    out = []
    for layer in cache.layers:
        out.append(
            (
                layer.keys[row : row + 1, :, keep].contiguous(),
                layer.values[row : row + 1, :, keep].contiguous(),
            )
        )
    return tuple(out)


class Decoder:
    """Runs batches of rows through ``model`` with ``cache`` holding sessions' prompt KV."""

    def __init__(
        self,
        model,
        cache: SessionKVCache,
        *,
        eos_ids: set[int],
        pad_id: int,
        device: torch.device,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.model = model
        self.cache = cache
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.device = device
        self.clock = clock

    def steps(self, rows: list[DecodeRow], stop_check: StopCheck | None = None) -> Iterator[None]:
        """Decode ``rows`` to the end, yielding after the first token and after every step.

        Inference mode is entered around each step, never across a ``yield``: torch's grad
        mode is thread-local state, and the consumer's code between steps must not run in it.
        """
        samplers = [RowSampler(row.params, row.seed, self.device) for row in rows]
        pasts: list[KVLayers | None] = []
        for row in rows:
            row.reused, past = self.cache.lookup(row.session_key, row.prompt)
            pasts.append(past)
        if self._expired(rows):
            return
        with torch.inference_mode():
            logits, cache, mask, positions = self._prefill(rows, pasts)
        del pasts
        live = list(range(len(rows)))  # batch position -> row index
        while True:
            with torch.inference_mode():
                for slot, index in enumerate(live):
                    self._advance(rows[index], samplers[index], logits[slot], stop_check)
            now = self.clock()
            for index in live:
                if rows[index].finish is None and now > rows[index].deadline:
                    rows[index].finish = "deadline"
            yield
            keep = [slot for slot, index in enumerate(live) if rows[index].finish is None]
            if not keep:
                return
            with torch.inference_mode():
                if len(keep) < len(live):
                    select = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(select)
                    mask, positions = mask[select], positions[select]
                    live = [live[slot] for slot in keep]
                tokens = torch.tensor(
                    [[rows[index].generated[-1]] for index in live], device=self.device
                )
                mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
                positions = positions + 1
                out = self.model(
                    input_ids=tokens,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                )
                logits = out.logits[:, -1]

    def _advance(
        self,
        row: DecodeRow,
        sampler: RowSampler,
        logits: torch.Tensor,
        stop_check: StopCheck | None,
    ) -> None:
        token = sampler.choose(logits, row.generated)
        if token in self.eos_ids:
            row.finish = "stop"
            return
        row.generated.append(token)
        if stop_check is not None and stop_check(row):
            row.finish = "stop"
        elif len(row.generated) >= row.params.max_new_tokens:
            row.finish = "length"

    def _expired(self, rows: list[DecodeRow]) -> bool:
        now = self.clock()
        for row in rows:
            if now > row.deadline:
                row.finish = "deadline"
        return all(row.finish is not None for row in rows)

    def _prefill(self, rows: list[DecodeRow], pasts: list[KVLayers | None]):
        """One forward over every row's new prompt tokens; returns the next-token logits, the
        batch cache, the attention mask and each row's last position."""
        reuse = [row.reused for row in rows]
        new = [len(row.prompt) - r for row, r in zip(rows, reuse, strict=True)]
        width, length = max(reuse), max(new)
        batch = len(rows)
        ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width + length), dtype=torch.long)
        positions = torch.zeros((batch, length), dtype=torch.long)
        for i, row in enumerate(rows):
            r, n = reuse[i], new[i]
            ids[i, length - n :] = torch.tensor(row.prompt[r:], dtype=torch.long)
            mask[i, width - r : width] = 1
            mask[i, width + length - n :] = 1
            positions[i, length - n :] = torch.arange(r, r + n)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        like = next((p for p in pasts if p is not None), None)
        spare = length + max(row.params.max_new_tokens for row in rows) + 1
        if like is not None and width:
            cache = _padded_past(pasts, reuse, like, spare)
        else:
            cache = GrowingCache(spare)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            cache_position=torch.arange(width, width + length, device=self.device),
            use_cache=True,
            logits_to_keep=1,
        )
        for i, row in enumerate(rows):
            if row.session_key is not None and self.cache.enabled:
                keep = mask[i].nonzero().squeeze(1)
                self.cache.store(row.session_key, row.prompt, _row_layers(cache, i, keep))
        return out.logits[:, -1], cache, mask, positions[:, -1:]
