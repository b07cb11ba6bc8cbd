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
- ``choices`` (constrained decoding): a GBNF grammar whose only sentences are the given texts
  (``root ::= "text 1" | "text 2" ...``), so every token keeps the draft inside one of them;
  the stream is closed as soon as the text so far is the prefix of a single choice, and that
  choice's whole text is the reply. The no-repeat n-gram processor is left out there: the
  texts are fixed, and banning a token inside one would only strand the grammar.

Prefix reuse: the context keeps the live session's tokens; when another session needs the
context, the live one's state (its KV cache) is saved first ("parked"), under a memory budget
with least-recently-used eviction. The next turn of a parked session loads its state, and
llama.cpp then evaluates only the tokens after the longest common prefix. Saving only on a
switch keeps the ~50 ms copy off the path of a session that speaks twice in a row. Only the prompt's
tokens are kept reusable, not the generated ones: generated tokens were evaluated one at a
time, and reusing their KV entries (computed with a different kernel than a batched prompt pass)
changes greedy output in the last bits; prompt-only reuse gives the same reply as no reuse.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import SalesbotError
from engine.flow.generation import GenerationParams
from engine.llm.base import (
    BackendError,
    BatchItem,
    Deadline,
    Generation,
    LLMBackend,
)
from engine.llm.hf.models import default_model_path

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
    can_constrain = True  # ``choices``: a grammar of the candidate texts (see the module doc)

    def __init__(
        self,
        model: str | Path | None = None,
        n_ctx: int = 4096,
        threads: int = 0,
        cache_mb: float = 256.0,
        prefix_reuse: bool = True,
        extra_buffers: bool = False,
    ):
        self.model_path = Path(model) if model else None
        self.n_ctx = n_ctx
        self.threads = threads
        self.prefix_reuse = prefix_reuse
        self.extra_buffers = extra_buffers
        self.states = SessionStates(int(cache_mb * 2**20))
        self._llm = None
        self._formatter = None
        self._live_key: str | None = None  # the session whose tokens the context holds now
        self._lock = threading.Lock()
        self._grammars: OrderedDict[tuple[str, ...], Any] = OrderedDict()
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
        self._llm = _open_llama(llama_cpp, path, self.extra_buffers, **kwargs)

    @property
    def cache_bytes(self) -> int:
        """Memory held by parked sessions (the live one is in the context, allocated anyway)."""
        return self.states.bytes

    def release(self, session_key: str) -> None:
        with self._lock:
            self.states.release(session_key)
            if self._live_key == session_key:
                self._live_key = None

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

    def _grammar(self, choices: tuple[str, ...]):
        """The parsed grammar of ``choices`` (cached: a stage's candidates repeat every turn)."""
        grammar = self._grammars.get(choices)
        if grammar is None:
            grammar = _import_llama().LlamaGrammar.from_string(choices_grammar(choices), False)
            self._grammars[choices] = grammar
            if len(self._grammars) > 64:
                self._grammars.popitem(last=False)
        self._grammars.move_to_end(choices)
        return grammar

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
            request["grammar"] = self._grammar(choices)
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
        """(the chosen text, tokens generated): stop once the text so far fits one choice."""
        options = tuple(dict.fromkeys(request.choices or ()))  # non-empty: see LLMBackend
        text, tokens = "", 0
        chunks = self._chunks(request, options)
        try:
            for chunk in chunks:
                text += chunk
                tokens += 1
                fitting = [c for c in options if c.startswith(text)]
                if len(fitting) == 1:
                    return fitting[0], tokens
        finally:
            chunks.close()
        if not text:
            raise BackendError("llama.cpp produced no text within the grammar")
        exact = [c for c in options if c == text]
        fitting = [c for c in options if c.startswith(text)]
        return (exact or fitting or [options[0]])[0], tokens

    def _chunks(self, request: BatchItem, choices: tuple[str, ...] | None = None) -> Iterator[str]:
        """Text chunks of one completion (within the grammar of ``choices`` when given)."""
        messages, params = list(request.messages), request.params
        seed, session_key = request.seed, request.session_key
        with self._lock:
            self.load()
            llm = self._llm
            deadline = Deadline.start(params)
            if session_key != self._live_key:  # else the live context is already this one's
                if self._live_key is not None:  # park the live session's state, then switch
                    self.states.put(self._live_key, llm.save_state())
                state = self.states.get(session_key) if session_key is not None else None
                if state is not None:
                    llm.load_state(state)
            self._live_key = session_key if self.prefix_reuse else None
            prompt: list[int] = []
            try:
                request = self._request(messages, params, seed, choices)
                prompt = request["prompt"]
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


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal (backslash, quote and control characters escaped)."""
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def choices_grammar(choices: Sequence[str]) -> str:
    """A GBNF grammar whose sentences are exactly ``choices``."""
    if not choices:
        raise BackendError("constrained decoding needs at least one choice")
    return "root ::= " + " | ".join(gbnf_literal(c) for c in choices) + "\n"
