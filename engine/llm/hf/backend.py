"""In-process generation with transformers + torch: the reference backend.

Generation goes through :class:`engine.llm.hf.decoder.Decoder`, which reuses each session's prompt
KV cache across turns and decodes many sessions in one batch. Calls are serialised by a lock:
torch already uses every core for one forward pass, so two generations at once on a CPU only make
both slower. Concurrency comes from batching instead (``generate_batch``, or
:class:`engine.llm.batching.BatchingBackend` in front of this backend).

``params.deadline_s`` bounds the whole call, waiting for the lock included. Decoding stops at
the first step past it: a draft cut there is returned (``finish_reason="deadline"``) and the
compliance filter judges it like any draft, which in strict mode still picks a whole approved
script, or the fallback when the cut draft matches nothing; with no token yet (the model busy,
the prompt still being encoded) the call raises :class:`DeadlineExceeded` and the engine sends
the stage's fallback. A decode step is not interrupted, so the overshoot is at most one step
(tens of milliseconds on an idle CPU).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.flow.generation import GenerationParams
from engine.llm.base import (
    BackendError,
    BatchItem,
    ChatMessage,
    Deadline,
    DeadlineExceeded,
    Generation,
    LLMBackend,
)
from engine.llm.hf.allocator import pin_mmap_threshold
from engine.llm.hf.kv_cache import SessionKVCache
from engine.llm.hf.models import default_model_path, load_model_and_tokenizer
from engine.llm.hf.precision import prepare_model, resolve_precision

DEFAULT_CACHE_MB = 512.0


class TransformersBackend(LLMBackend):
    """Any local Hugging Face causal LM folder or GGUF file (default: SmolLM2-135M-Instruct).

    ``dtype``: auto (bf16 where native, see engine.llm.hf.precision) | fp32 | bf16 | int8 (CPU),
    fp32 | bf16 | fp16 (CUDA). ``cache_mb``: memory budget
    for all sessions' cached prompts (0 turns reuse off). ``threads``: torch intra-op threads
    (0 = torch's default, one per core). ``device``: auto | cpu | cuda[:n]. ``adapter``: a
    LoRA adapter folder made by `salesbot tune`, verified against its manifest and merged into
    the weights at load (engine.tuning.adapters), so decoding is unchanged.
    """

    name = "transformers"
    can_stream = True
    can_batch = True
    can_mix_params = True  # the decoder samples each row with its own parameters
    can_constrain = True  # ``choices``: decoding within the candidate texts (hf/constrained.py)

    def __init__(
        self,
        model: str | Path | None = None,
        dtype: str = "auto",
        threads: int = 0,
        cache_mb: float = DEFAULT_CACHE_MB,
        device: str = "auto",
        adapter: str | Path | None = None,
    ):
        self.model_path = Path(model) if model else None
        self.adapter = Path(adapter) if adapter else None
        self.adapter_hash: str | None = None  # set once the adapter is merged
        self._base_sha256: str | None = None
        self.dtype = dtype
        self.threads = threads
        self.cache_mb = cache_mb
        self.device = device
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()
        self.cache = SessionKVCache(cache_mb)
        self._decoder = None
        self.clock = time.perf_counter  # deadlines are measured on it (tests may replace it)

    # -- loading ----------------------------------------------------------------------------

    def load(self) -> None:
        if self._model is not None:
            return
        pin_mmap_threshold()  # resident memory = what torch holds (see allocator.py)
        precision = resolve_precision(self.dtype, self.device)
        path = self.model_path or default_model_path()
        model, tokenizer = load_model_and_tokenizer(path, precision.load_dtype)
        if self.adapter:
            from engine.tuning.adapters import base_file_sha256

            self._base_sha256 = base_file_sha256(path)
        self.use_model(model, tokenizer)

    def use_model(self, model, tokenizer) -> TransformersBackend:
        """Serve an already built model (tests build tiny ones; the CLI loads from disk)."""
        import torch

        pin_mmap_threshold()
        if self.threads:
            torch.set_num_threads(self.threads)
        precision = resolve_precision(self.dtype, self.device)
        if self.adapter:  # merged before any dtype change or int8 quantisation
            from engine.tuning.adapters import merge_adapter

            model, manifest = merge_adapter(model, self.adapter, self._base_sha256)
            self.adapter_hash = manifest["adapter_hash"]
        model = prepare_model(model, precision)
        from engine.llm.hf.attention import use_grouped_sdpa

        use_grouped_sdpa(model)  # padded batches: no per-layer copy of the keys and values
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
        from engine.llm.hf.decoder import Decoder

        self._model, self._tokenizer, self.precision = model, tokenizer, precision
        self._decoder = Decoder(
            model,
            self.cache,
            eos_ids=eos_ids,
            pad_id=pad,
            device=precision.device,
            clock=lambda: self.clock(),
        )
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or 1 << 30
        return self

    @property
    def model(self):
        self.load()
        return self._model

    @property
    def tokenizer(self):
        self.load()
        return self._tokenizer

    # -- cache ------------------------------------------------------------------------------

    @property
    def cache_bytes(self) -> int:
        """Bytes held now by all sessions' cached prompt KV (never above ``cache_mb``)."""
        return self.cache.nbytes

    def release(self, session_key: str) -> None:
        """Free a session's cached prompt (call when the conversation ends)."""
        self.cache.release(session_key)

    # -- generation -------------------------------------------------------------------------

    def encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=True
        )
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)

    def _generate(self, request: BatchItem) -> Generation:
        """With ``request.choices`` the reply is exactly one of these texts (constrained)."""
        deadline = Deadline.start(request.params, self.clock)
        generation = self._run([request], deadline.at)[0]
        if generation.finish_reason == "deadline" and not generation.text:
            raise deadline.exceeded()
        return generation

    def generate_batch(self, items: Sequence[BatchItem | tuple]) -> list[Generation]:
        """One decode loop for all items; an item past its deadline gets finish_reason
        "deadline" (and whatever text it had) while the others carry on."""
        batch = [BatchItem.of(item) for item in items]
        if not batch:
            return []
        started = self.clock()
        lock_deadline = started + max(item.params.deadline_s for item in batch)
        return self._run(batch, lock_deadline)

    def _stream(self, request: BatchItem) -> Iterator[str]:
        """Text chunks as they are decoded. Closing the iterator stops generation at once and
        frees the model for the next caller. At the deadline the stream ends where it is (it
        raises ``DeadlineExceeded`` only if it had produced nothing). With ``choices`` the
        chosen text comes as one chunk once the prefix names it."""
        params = request.params
        deadline = Deadline.start(params, self.clock)
        self._acquire(deadline.at)
        try:
            row = self._row(request, deadline.at)
            if row.trie is not None:
                for _ in self._decoder.steps([row]):
                    pass
                if row.finish == "deadline" and not row.generated:
                    raise deadline.exceeded()
                yield self._row_text(row)
                return
            emitted = ""
            for _ in self._decoder.steps([row], self._stop_check):
                text = self._text(row.generated, params, strip=False).lstrip()
                if text.endswith("\ufffd"):
                    continue  # half of a multi-byte character: wait for the rest
                if len(text) > len(emitted) and text.startswith(emitted):
                    yield text[len(emitted) :]
                    emitted = text
            if row.finish == "deadline" and not row.generated:
                raise deadline.exceeded()
            final = self._text(row.generated, params)
            if len(final) > len(emitted) and final.startswith(emitted):
                yield final[len(emitted) :]  # what was held back (a character never completed)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"transformers generation failed: {exc}") from exc
        finally:
            self._lock.release()

    # -- internals --------------------------------------------------------------------------

    def _acquire(self, deadline: float) -> None:
        self.load()
        if not self._lock.acquire(timeout=max(0.0, deadline - self.clock())):
            raise DeadlineExceeded("the model stayed busy past the deadline")

    def _row(self, item: BatchItem, deadline: float):
        from engine.llm.hf.constrained import TokenTrie
        from engine.llm.hf.decoder import DecodeRow

        prompt = self.encode(item.messages)
        if len(prompt) + item.params.max_new_tokens > self.max_positions:
            raise BackendError(
                f"prompt of {len(prompt)} tokens + {item.params.max_new_tokens} new tokens "
                f"exceeds the model's {self.max_positions} positions"
            )
        return DecodeRow(
            prompt=prompt,
            params=item.params,
            seed=item.seed,
            session_key=item.session_key,
            deadline=min(deadline, item.deadline_at or deadline),
            trie=TokenTrie.from_tokenizer(self._tokenizer, item.choices) if item.choices else None,
        )

    def _run(self, batch: list[BatchItem], lock_deadline: float) -> list[Generation]:
        started = self.clock()
        self._acquire(lock_deadline)
        try:
            rows = [self._row(item, started + item.params.deadline_s) for item in batch]
            beams = [i for i, row in enumerate(rows) if row.params.num_beams > 1 and not row.trie]
            plain = [row for row in rows if row.params.num_beams == 1 or row.trie]
            if plain:
                for _ in self._decoder.steps(plain, self._stop_check):
                    pass
            for i in beams:
                self._beam_search(rows[i])
        except BackendError:
            raise
        except Exception as exc:  # any failure must end in a fallback, never a crash
            raise BackendError(f"transformers generation failed: {exc}") from exc
        finally:
            self._lock.release()
        seconds = self.clock() - started
        return [
            Generation(
                text=self._row_text(row),
                prompt_tokens=len(row.prompt),
                completion_tokens=len(row.generated),
                seconds=seconds,
                finish_reason=row.finish or "length",
                cached_tokens=row.reused,
            )
            for row in rows
        ]

    def _row_text(self, row) -> str:
        """A row's reply: its decoded tokens, or with constrained decoding the whole text its
        prefix named (the lowest-index consistent text when the deadline or the token limit cut
        it before the prefix was unique)."""
        if row.trie is None:
            return self._text(row.generated, row.params)
        if row.choice is not None:
            return row.trie.texts[row.choice]
        if not row.generated:
            return ""
        return row.trie.texts[row.trie.first_consistent(row.generated)]

    def _text(self, ids: list[int], params: GenerationParams, strip: bool = True) -> str:
        text = self._tokenizer.decode(ids, skip_special_tokens=True)
        for stop in params.stop:
            text = text.split(stop)[0]
        return text.strip() if strip else text

    def _stop_check(self, row) -> bool:
        if not row.params.stop:
            return False
        tail = self._tokenizer.decode(row.generated[-16:], skip_special_tokens=True)
        return any(stop in tail for stop in row.params.stop)

    def _beam_search(self, row) -> None:
        """Beam search through ``model.generate`` (no cache reuse: beams are the rare case)."""
        import torch

        params = row.params
        ids = torch.tensor([row.prompt], device=self.precision.device)
        with torch.inference_mode():
            output = self._model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=params.max_new_tokens,
                do_sample=False,
                num_beams=params.num_beams,
                repetition_penalty=params.repetition_penalty,
                no_repeat_ngram_size=params.no_repeat_ngram_size,
                pad_token_id=self._decoder.pad_id,
            )
        generated = output[0, len(row.prompt) :].tolist()
        row.generated = [t for t in generated if t not in self._decoder.eos_ids]
        row.finish = "stop" if len(row.generated) < len(generated) else "length"
