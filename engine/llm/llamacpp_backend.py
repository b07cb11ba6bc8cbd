"""In-process generation with llama.cpp (llama-cpp-python): the CPU latency path.

Measured on two CPU cores with the default SmolLM2-135M GGUF, llama.cpp decodes several times
faster than transformers and loads the GGUF directly, with no conversion (see
docs/benchmarks.md). It is an optional extra: ``pip install "salesbot[llamacpp]"``.

Parameter mapping to llama.cpp's sampler:

- ``do_sample: false`` -> ``temperature 0`` (greedy); ``temperature``, ``top_p``, ``top_k`` map
  one to one.
- ``repetition_penalty`` -> ``repeat_penalty``. Not identical: llama.cpp penalises only the last
  ``penalty_last_n`` (64) tokens, transformers the whole sequence.
- ``no_repeat_ngram_size`` has no llama.cpp equivalent; it is applied exactly, as transformers
  does, by a logits processor that bans any token completing an n-gram already in the sequence.
- ``num_beams`` > 1 has no equivalent (llama.cpp does not beam-search): refused with a clear
  error rather than silently ignored.
- ``stop`` strings map to ``stop``; ``deadline_s`` is enforced between streamed tokens.
- ``choices`` (constrained decoding): a logits processor masks every token that does not
  continue some choice, walking a token trie over the choices' own llama.cpp token ids (the
  :class:`~engine.llm.hf.constrained.TokenTrie` the transformers backend uses), so every token
  keeps the draft inside one of them; generation stops as soon as the tokens so far belong to a
  single choice, whose whole text is then the reply. Where all open choices go on with the same
  token, it is taken without running the model (jump-forward; see ``_constrained_tokens``).
  A GBNF grammar of the texts was the first form; llama-cpp-python's grammar sampler checks
  every vocabulary token against every live alternative, seconds per token with 30 long
  literals on two cores (docs/benchmarks.md), where the trie costs one numpy mask. The no-repeat
  n-gram processor is left out there: the texts are fixed, and banning a token inside one
  would only strand the trie.

Prefix reuse: the context keeps the live session's tokens; when another session needs the
context, the live one's state (its KV cache) is saved first ("parked"), under a memory budget
with least-recently-used eviction. The next turn of a parked session loads its state, and
llama.cpp then evaluates only the tokens after the longest common prefix. Saving only on a
switch keeps the ~50 ms copy off the path of a session that speaks twice in a row. Only the prompt's
tokens are kept reusable, not the generated ones: generated tokens were evaluated one at a
time, and reusing their KV entries (computed with a different kernel than a batched prompt pass)
changes greedy output in the last bits; prompt-only reuse gives the same reply as no reuse.

Prefill (:meth:`LlamaCppBackend.prefill`): once the engine has decided a reply, the next turn's
prompt is known up to the customer's next words: this prompt, the reply and the chat template's
start of the next user message. Those ~50 tokens are encoded in a background thread while the
reply is spoken, so the next decision encodes only the customer's line. On two slow cores that
is most of a constrained decision (prompt tokens at ~160/s: 0.25 s of a ~0.4 s turn). The
sent reply is pending until encoded, by the background thread or by the session's next call,
whichever takes the context first, and always as one batch: the KV cache, and so the reply, is
the same whether or not the thread was in time.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import SalesbotError
from engine.flow.generation import GenerationParams
from engine.llm.base import (
    BackendError,
    BatchItem,
    ChatMessage,
    Deadline,
    Generation,
    LLMBackend,
)
from engine.llm.hf.constrained import TokenTrie
from engine.llm.hf.models import default_model_path
from engine.llm.tokens import common_prefix

INSTALL_HINT = (
    'the llamacpp backend needs llama-cpp-python: pip install "salesbot[llamacpp]" '
    "(it builds llama.cpp from source, about 6-8 minutes on two cores)"
)


def _import_llama():
    try:
        import llama_cpp
    except ImportError as exc:
        raise SalesbotError(INSTALL_HINT) from exc
    return llama_cpp


_CONSTRUCT_LOCK = threading.Lock()


def _open_llama(llama_cpp, path: Path, extra_buffers: bool, **kwargs: Any):
    """``Llama(...)``, optionally without llama.cpp's extra weight buffers (AMX, repacking).

    ``Llama()`` does not expose ``use_extra_bufts``, so its default-params factory is wrapped
    for the duration of the constructor. Why: on virtual machines whose CPU advertises AMX but
    whose kernel does not grant tile use, llama.cpp's AMX matmul segfaults on the first token
    (reproduced on this project's CI machines); without the extra buffers it runs normally.
    """
    if extra_buffers:
        return llama_cpp.Llama(model_path=str(path), **kwargs)
    low_level = llama_cpp.llama_cpp
    original = low_level.llama_model_default_params

    def without_extra_buffers():
        params = original()
        params.use_extra_bufts = False
        return params

    with _CONSTRUCT_LOCK:
        low_level.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(model_path=str(path), **kwargs)
        finally:
            low_level.llama_model_default_params = original


def _gguf_adapter(folder: Path, base: Path) -> tuple[dict[str, Any], str]:
    """The verified manifest of a `salesbot tune` adapter and its GGUF LoRA file (written by
    tune beside the PEFT files, so the adapter hash covers it). llama.cpp applies it at run
    time; the transformers backend merges the PEFT weights instead: same adapter, same hash."""
    from engine.tuning.adapters import base_file_sha256
    from engine.tuning.gguf_lora import GGUF_ADAPTER
    from engine.tuning.manifest import AdapterError, check_base, verify_adapter

    manifest = verify_adapter(folder)

    def no_fingerprint() -> str:
        raise AdapterError(f"{folder}: the manifest names no base model file to check against")

    check_base(manifest, folder, base_file_sha256(base), no_fingerprint)
    lora = folder / GGUF_ADAPTER
    if not lora.is_file():
        raise AdapterError(
            f"{folder}: no {GGUF_ADAPTER} (the llamacpp backend's form of the adapter); "
            "retrain with `salesbot tune`, which writes it"
        )
    return manifest, str(lora)


def no_repeat_ngram_processor(size: int):
    """A llama.cpp logits processor with transformers' ``no_repeat_ngram_size`` semantics."""

    def process(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        ids = input_ids.tolist()
        if size <= 0 or len(ids) < size:
            return scores
        prefix = tuple(ids[len(ids) - size + 1 :])
        banned = {
            ids[i + size - 1]
            for i in range(len(ids) - size + 1)
            if tuple(ids[i : i + size - 1]) == prefix
        }
        if banned:
            scores = scores.copy()
            scores[list(banned)] = -np.inf
        return scores

    return process


class SessionStates:
    """Saved llama.cpp states per session, LRU-evicted to stay within ``budget_bytes``."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._states: OrderedDict[str, Any] = OrderedDict()

    @property
    def bytes(self) -> int:
        return sum(state.llama_state_size for state in self._states.values())

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key: str):
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
        return state

    def put(self, key: str, state) -> None:
        self._states[key] = state
        self._states.move_to_end(key)
        while self._states and self.bytes > self.budget_bytes:
            self._states.popitem(last=False)

    def release(self, key: str) -> None:
        self._states.pop(key, None)


class LlamaCppBackend(LLMBackend):
    """One llama.cpp context shared by all sessions; calls are serialised (it is not re-entrant,
    and two generations at once on two cores would only slow each other down)."""

    name = "llamacpp"
    can_stream = True
    can_constrain = True  # ``choices``: a token trie over the candidate texts (the module doc)

    def __init__(
        self,
        model: str | Path | None = None,
        n_ctx: int = 4096,
        threads: int = 0,
        cache_mb: float = 256.0,
        prefix_reuse: bool = True,
        extra_buffers: bool = False,
        adapter: str | Path | None = None,
    ):
        self.model_path = Path(model) if model else None
        self.adapter = Path(adapter) if adapter else None
        self.adapter_hash: str | None = None  # set once the adapter is applied
        self.n_ctx = n_ctx
        self.threads = threads
        self.prefix_reuse = prefix_reuse
        self.extra_buffers = extra_buffers
        self.states = SessionStates(int(cache_mb * 2**20))
        self._llm = None
        self._formatter = None
        self._live_key: str | None = None  # the session whose tokens the context holds now
        self._lock = threading.Lock()
        self._tries: OrderedDict[tuple[str, ...], TokenTrie] = OrderedDict()
        self._pending: dict[str, list[ChatMessage]] = {}  # session -> sent reply (see prefill)
        self._pending_lock = threading.Lock()  # never held while llama.cpp runs
        _import_llama()  # fail at construction, with the install hint, not mid-call

    def load(self) -> None:
        if self._llm is not None:
            return
        llama_cpp = _import_llama()
        path = self.model_path or default_model_path()
        if path.suffix != ".gguf":
            raise SalesbotError(f"{path}: the llamacpp backend reads .gguf files")
        # llama-cpp-python's default is half the cores (one here), which halves decode speed on a
        # two-core machine: 59 against 100 tokens/s measured. Use every core we may run on.
        threads = self.threads or len(os.sched_getaffinity(0))
        kwargs: dict[str, Any] = {
            "n_ctx": self.n_ctx,
            "n_threads": threads,
            "n_threads_batch": threads,
            "verbose": False,
        }
        manifest = None
        if self.adapter:
            manifest, kwargs["lora_path"] = _gguf_adapter(self.adapter, path)
        self._llm = _open_llama(llama_cpp, path, self.extra_buffers, **kwargs)
        if manifest is not None:
            self.adapter_hash = manifest["adapter_hash"]

    @property
    def cache_bytes(self) -> int:
        """Memory held by parked sessions (the live one is in the context, allocated anyway)."""
        return self.states.bytes

    def release(self, session_key: str) -> None:
        with self._pending_lock:
            self._pending.pop(session_key, None)
        with self._lock:
            self.states.release(session_key)
            if self._live_key == session_key:
                self._live_key = None

    def prefill(self, messages: list[ChatMessage], session_key: str | None) -> None:
        """Encode ``messages`` (a turn's prompt and the reply sent, ending with the assistant's
        message) into the session's context in the background (see the module doc). Only the
        messages are recorded here; tokenising waits for the lock, off the caller's path."""
        if not self.prefix_reuse or session_key is None or self._llm is None:
            return
        with self._pending_lock:
            self._pending[session_key] = list(messages)
        threading.Thread(target=self._prefill_now, args=(session_key,), daemon=True).start()

    def _prefill_now(self, session_key: str) -> None:
        with self._lock:
            try:
                self._settle(session_key)
            except Exception:  # a failed prefill costs the next turn time, never a reply
                self._llm.reset()

    def _next_turn_prefix(self, messages: list[ChatMessage]) -> list[int]:
        """The tokens every next-turn prompt after ``messages`` starts with: the prompt of
        ``messages`` plus two different user lines, up to where they differ, less one token
        (a customer line's first characters could merge with the token before them)."""
        a, _ = self._prompt_tokens([*messages, {"role": "user", "content": "A"}])
        b, _ = self._prompt_tokens([*messages, {"role": "user", "content": "B"}])
        return a[: max(0, common_prefix(a, b) - 1)]

    def _settle(self, session_key: str | None) -> None:
        """Encode the session's pending sent reply, if any, in one batch (lock held)."""
        if session_key is None:
            return
        with self._pending_lock:
            messages = self._pending.pop(session_key, None)
        if messages is None:
            return
        tokens = self._next_turn_prefix(messages)
        self._activate(session_key)
        llm = self._llm
        held = common_prefix(list(llm.input_ids[: llm.n_tokens]), tokens)
        if held < len(tokens):
            llm.n_tokens = held
            llm.eval(tokens[held:])
        llm._requires_eval = True  # the next call samples from its own prompt's logits

    def _activate(self, session_key: str | None) -> None:
        """Make the context hold ``session_key``'s tokens (lock held): park the live session's
        state and load this one's, unless it is live already."""
        llm = self._llm
        if session_key != self._live_key:  # else the live context is already this one's
            if self._live_key is not None:  # park the live session's state, then switch
                self.states.put(self._live_key, llm.save_state())
            state = self.states.get(session_key) if session_key is not None else None
            if state is not None:
                llm.load_state(state)
        self._live_key = session_key if self.prefix_reuse else None

    def _prompt_tokens(self, messages) -> tuple[list[int], list[str]]:
        """The chat prompt as tokens, with the GGUF's own chat template, and its stop strings."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = self._llm
        if self._formatter is None:
            eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace")
            bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "replace")
            self._formatter = Jinja2ChatFormatter(
                template=llm.metadata["tokenizer.chat_template"],
                eos_token=eos,
                bos_token=bos,
                stop_token_ids=[llm.token_eos()],
            )
        formatted = self._formatter(messages=list(messages))
        stops = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop]
        tokens = llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=False, special=True)
        return tokens, [s for s in stops if s]

    def _trie(self, choices: tuple[str, ...]) -> TokenTrie:
        """The token trie of ``choices`` (cached: a stage's candidates repeat every turn)."""
        trie = self._tries.get(choices)
        if trie is None:
            llm = self._llm
            sequences = [
                llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) for text in choices
            ]
            trie = self._tries[choices] = TokenTrie(choices, sequences)
            if len(self._tries) > 64:
                self._tries.popitem(last=False)
        self._tries.move_to_end(choices)
        return trie

    def _request(
        self,
        messages,
        params: GenerationParams,
        seed: int | None,
        choices: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        if params.num_beams > 1:
            raise BackendError("the llamacpp backend does not support beam search (num_beams > 1)")
        llama_cpp = _import_llama()
        tokens, template_stops = self._prompt_tokens(messages)
        request: dict[str, Any] = {
            "prompt": tokens,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature if params.do_sample else 0.0,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "repeat_penalty": params.repetition_penalty,
            "stop": [*template_stops, *params.stop] or None,
            "stream": True,
        }
        if seed is not None:
            request["seed"] = seed
        if choices is not None:
            request["trie"] = self._trie(choices)
            request["logits_processor"] = llama_cpp.LogitsProcessorList(
                [trie_processor(request["trie"], len(tokens), self._llm.token_eos())]
            )
        elif params.no_repeat_ngram_size > 0:
            request["logits_processor"] = llama_cpp.LogitsProcessorList(
                [no_repeat_ngram_processor(params.no_repeat_ngram_size)]
            )
        return request

    def _stream(self, request: BatchItem) -> Iterator[str]:
        """Text chunks as llama.cpp produces them; closing the iterator stops generation. With
        ``choices``, one chunk: the choice named by the shortest unique prefix."""
        if request.choices is not None:
            yield self._choose(request)[0]
            return
        yield from self._chunks(request)

    def _choose(self, request: BatchItem) -> tuple[str, int]:
        """(the chosen text, tokens generated): stop once the tokens so far fit one choice."""
        options = tuple(dict.fromkeys(request.choices or ()))  # non-empty: see LLMBackend
        generated: list[int] = []
        chunks = self._chunks(request, options, generated)
        try:
            for _ in chunks:
                trie = self._trie(options)
                chosen = trie.unique(generated)
                if chosen is not None:
                    return options[chosen], len(generated)
        finally:
            chunks.close()
        if not generated:
            raise BackendError("llama.cpp produced no token within the choices")
        # Ended (end of sequence, or max tokens) while several choices were still open: the
        # one that ends here, else the first that starts so.
        trie = self._trie(options)
        node = trie.node(generated)
        chosen = node.ends if node is not None else None
        if chosen is None:
            chosen = trie.first_consistent(generated)
        return options[chosen], len(generated)

    def _chunks(
        self,
        request: BatchItem,
        choices: tuple[str, ...] | None = None,
        generated: list[int] | None = None,
    ) -> Iterator[str]:
        """Text chunks of one completion (within ``choices`` when given). ``generated``
        collects the completion's token ids as they come (the trie reads ids, not text: a
        multi-byte character may span tokens, and llama.cpp then holds its text back)."""
        messages, params = list(request.messages), request.params
        seed, session_key = request.seed, request.session_key
        with self._lock:
            self.load()
            llm = self._llm
            deadline = Deadline.start(params)
            prompt: list[int] = []
            try:
                self._activate(session_key)
                self._settle(session_key)  # the last reply, if the background had no time
                request = self._request(messages, params, seed, choices)
                prompt = request["prompt"]
                if generated is not None:  # constrained: token ids, model passes only at branches
                    for token in self._constrained_tokens(request, seed):
                        generated.append(token)
                        yield ""
                        if deadline.passed():
                            raise deadline.exceeded("llamacpp")
                    return
                for chunk in llm.create_completion(**request):
                    text = chunk["choices"][0]["text"]
                    if text:
                        yield text
                    if deadline.passed():
                        raise deadline.exceeded("llamacpp")
            except BackendError:
                raise
            except Exception as exc:  # any failure must end in a fallback, never a crash
                raise BackendError(f"llama.cpp generation failed: {exc}") from exc
            finally:
                keeps = self.prefix_reuse and session_key is not None
                if (
                    keeps
                    and llm.n_tokens >= len(prompt)
                    and list(llm.input_ids[: len(prompt)]) == prompt
                ):
                    llm.n_tokens = len(prompt)  # keep only the prompt reusable (see above)
                    # The live logits are now the last generated token's, not the prompt's:
                    # without this flag an identical next prompt would sample from them.
                    llm._requires_eval = True

    def _constrained_tokens(self, request: dict[str, Any], seed: int | None) -> Iterator[int]:
        """The completion's token ids up to (not including) end of sequence, within the trie.

        Jump-forward: where every choice still open continues with the same token, that token
        is forced and taken without running the model; it is encoded together with the next
        branch's pass, in one batch. The model runs only at branches ("Fibre 500 gives you 500
        Mbps for ..." is named after 10 tokens, 3 of them branches), each sampled by llama.cpp's
        own sampler chain with seed ``seed + branch``. The repeat penalty is off here: the
        words a text repeats are the script's, not the model's (as for no-repeat n-grams).
        """
        llm, trie = self._llm, request["trie"]
        prompt, eos = request["prompt"], llm.token_eos()
        generated: list[int] = []
        branches = 0
        while len(generated) < request["max_tokens"]:
            node = trie.node(generated)
            if node is None:
                return
            if len(node.children) == 1 and node.ends is None:  # forced: no choice to make
                generated.append(next(iter(node.children)))
                yield generated[-1]
                continue
            if seed is not None:
                llm.set_seed(seed + branches)
            branches += 1
            sampled = llm.generate(
                prompt + generated,  # the cached prefix is reused; the rest is one batch
                top_k=request["top_k"],
                top_p=request["top_p"],
                temp=request["temperature"],
                repeat_penalty=1.0,
                logits_processor=request["logits_processor"],
            )
            try:
                token = next(sampled)
            finally:
                sampled.close()
            if token == eos:
                return
            generated.append(token)
            yield token

    def _generate(self, request: BatchItem) -> Generation:
        started = time.perf_counter()
        if request.choices is not None:
            text, tokens = self._choose(request)
            return Generation(text, 0, tokens, time.perf_counter() - started)
        text = "".join(self._stream(request)).strip()
        for stop in request.params.stop:
            text = text.split(stop)[0]
        llm = self._llm
        return Generation(
            text=text.strip(),
            prompt_tokens=0,
            completion_tokens=len(llm.tokenize(text.encode("utf-8"), add_bos=False)) if text else 0,
            seconds=time.perf_counter() - started,
        )


def trie_processor(trie: TokenTrie, prompt_length: int, eos: int):
    """A llama.cpp logits processor that allows only the tokens continuing a text of ``trie``
    (and end of sequence where a text ends), given the completion so far: the ids after the
    prompt's ``prompt_length``."""

    def process(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        allowed, ends = trie.allowed([int(t) for t in input_ids[prompt_length:]])
        if ends:
            allowed = [*allowed, eos]
        if not allowed:  # off the trie (cannot happen while every step is masked): stop
            allowed = [eos]
        masked = np.full_like(scores, -np.inf)
        masked[allowed] = scores[allowed]
        return masked

    return process
