"""The decode loop: many rows, one forward pass per step, per-row KV-cache reuse.

Why not ``model.generate``? It cannot mix rows that reuse different amounts of cached prompt,
it applies one set of sampling parameters to the whole batch, and it re-checks every logits
processor over the whole prompt each step. This loop is small and does exactly what the LLM stage
needs:

1. For each row, look up its session's cached prompt KV and reuse the longest common prefix.
2. Prefill row by row: row ``i`` reuses ``r_i`` cached tokens and encodes its ``n_i`` new ones
   in a forward of its own, exactly as it would alone, and its prompt KV is stored for its
   session. Prefill is compute-bound on a CPU (one row of 350 tokens runs at the same tokens/s
   as eight), so batching it gains nothing, while padding every row's new tokens to the longest
   did cost: one row whose cache was cold (450 new tokens) made ten warm rows (40-120 new
   tokens each) encode 450 too, 3-5x the real work in the batches of a simulation.
3. The rows' KV is left-padded to the longest prompt and stacked into one batch cache
   (``[pad | prompt_i]``; the attention mask hides the pads and explicit position ids keep
   every token at its true position), then one token per step is decoded for all live rows;
   finished rows are dropped from the batch (their cache rows are selected away), so a long
   reply does not make 31 finished rows keep computing.

The batch's cache grows in place (:mod:`engine.llm.hf.growing_cache`) and attention keeps grouped
query heads grouped (:mod:`engine.llm.hf.attention`): both avoid copying every layer's keys and
values once per step, which dominated large batches.

The loop is a generator that yields after every step, so streaming and early stop are the same
code as a plain call: the caller reads each row's tokens and may close the generator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from engine.flow.generation import GenerationParams
from engine.llm.hf.constrained import TokenTrie
from engine.llm.hf.growing_cache import GrowingCache
from engine.llm.hf.kv_cache import KVLayers, SessionKVCache
from engine.llm.hf.sampling import RowSampler


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
    trie: TokenTrie | None = None  # constrained decoding: only these texts may be generated
    choice: int | None = None  # constrained: the text the generated prefix names, once unique


StopCheck = Callable[[DecodeRow], bool]  # True: the row's text hit a stop string


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
        if row.trie is not None:
            self._advance_constrained(row, sampler, logits)
            return
        token = sampler.choose(logits, row.generated)
        if token in self.eos_ids:
            row.finish = "stop"
            return
        row.generated.append(token)
        if stop_check is not None and stop_check(row):
            row.finish = "stop"
        elif len(row.generated) >= row.params.max_new_tokens:
            row.finish = "length"

    def _advance_constrained(
        self, row: DecodeRow, sampler: RowSampler, logits: torch.Tensor
    ) -> None:
        """One step within the trie; stops once the prefix names a single text (or a text
        ends and the model chose the end-of-sequence token)."""
        trie = row.trie
        tokens, can_end = trie.allowed(row.generated)
        eos = min(self.eos_ids) if self.eos_ids else None
        allowed = tokens + ([eos] if can_end and eos is not None else [])
        if not allowed:  # cannot happen for a prefix taken from the trie; never loop on it
            row.choice, row.finish = trie.first_consistent(row.generated), "stop"
            return
        token = sampler.choose(logits, row.generated, allowed)
        if token == eos and can_end:
            row.choice, row.finish = trie.node(row.generated).ends, "stop"
            return
        row.generated.append(token)
        choice = trie.unique(row.generated)
        if choice is not None:
            row.choice, row.finish = choice, "stop"
        elif len(row.generated) >= row.params.max_new_tokens:
            row.finish = "length"

    def _expired(self, rows: list[DecodeRow]) -> bool:
        now = self.clock()
        for row in rows:
            if now > row.deadline:
                row.finish = "deadline"
        return all(row.finish is not None for row in rows)

    def _prefill(self, rows: list[DecodeRow], pasts: list[KVLayers | None]):
        """Encode each row's new prompt tokens on top of its reused KV (no padding), store the
        prompt KV for the row's session, and stack the rows into one left-padded batch cache;
        returns the next-token logits, the batch cache, the attention mask and each row's last
        position."""
        logits, prompts = [], []
        for row, past in zip(rows, pasts, strict=True):
            reused = row.reused if past is not None else 0
            own = GrowingCache(0)
            if reused:
                for layer, (k, v) in enumerate(past):
                    own.update(k, v, layer)
            ids = torch.tensor([row.prompt[reused:]], dtype=torch.long, device=self.device)
            out = self.model(
                input_ids=ids,
                attention_mask=torch.ones((1, len(row.prompt)), dtype=torch.long,
                                          device=self.device),
                position_ids=torch.arange(reused, len(row.prompt), device=self.device)[None],
                past_key_values=own,
                cache_position=torch.arange(reused, len(row.prompt), device=self.device),
                use_cache=True,
                logits_to_keep=1,
            )  # fmt: skip
            logits.append(out.logits[0, -1])
            layers = tuple((layer.keys.contiguous(), layer.values.contiguous())
                           for layer in own.layers)  # fmt: skip
            prompts.append(layers)
            if row.session_key is not None and self.cache.enabled:
                self.cache.store(row.session_key, row.prompt, layers)
        batch = len(rows)
        width = max(len(row.prompt) for row in rows)
        mask = torch.zeros((batch, width), dtype=torch.long)
        positions = torch.zeros((batch, 1), dtype=torch.long)
        for i, row in enumerate(rows):
            mask[i, width - len(row.prompt) :] = 1
            positions[i, 0] = len(row.prompt) - 1
        cache = GrowingCache(max(row.params.max_new_tokens for row in rows) + 1)
        for layer, (k0, v0) in enumerate(prompts[0]):
            keys = k0.new_zeros((batch, k0.shape[1], width, k0.shape[3]))
            values = v0.new_zeros((batch, v0.shape[1], width, v0.shape[3]))
            for i, layers in enumerate(prompts):
                k, v = layers[layer]
                keys[i, :, width - k.shape[2] :] = k[0]
                values[i, :, width - v.shape[2] :] = v[0]
            cache.update(keys, values, layer)
        return (
            torch.stack(logits),
            cache,
            mask.to(self.device),
            positions.to(self.device),
        )
