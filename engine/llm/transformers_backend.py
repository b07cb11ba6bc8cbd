"""In-process generation with transformers + torch: the reference backend."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from engine.generation import GenerationParams
from engine.llm.base import BackendError, ChatMessage, Generation
from engine.llm.models import default_model_path, load_model_and_tokenizer


class TransformersBackend:
    """Loads lazily (the first ``generate`` pays for it) and serialises generation calls.

    torch already uses every core for one forward pass, so running two generations at once on
    a CPU only makes both slower; the lock keeps latency predictable.
    """

    name = "transformers"

    def __init__(self, model: str | Path | None = None, dtype: str = "float32", threads: int = 0):
        self.model_path = Path(model) if model else None
        self.dtype = dtype
        self.threads = threads
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()

    def load(self) -> None:
        if self._model is not None:
            return
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        path = self.model_path or default_model_path()
        model, tokenizer = load_model_and_tokenizer(path, getattr(torch, self.dtype))
        model.eval()
        self._model, self._tokenizer = model, tokenizer

    def generate(
        self, messages: list[ChatMessage], params: GenerationParams, seed: int | None = None
    ) -> Generation:
        import torch

        with self._lock:
            self.load()
            tokenizer, model = self._tokenizer, self._model
            started = time.perf_counter()
            try:
                inputs = tokenizer.apply_chat_template(
                    list(messages),
                    add_generation_prompt=True,
                    return_tensors="pt",
                    return_dict=True,
                )
                if seed is not None:
                    torch.manual_seed(seed)
                kwargs = dict(
                    max_new_tokens=params.max_new_tokens,
                    do_sample=params.do_sample,
                    num_beams=params.num_beams,
                    repetition_penalty=params.repetition_penalty,
                    no_repeat_ngram_size=params.no_repeat_ngram_size,
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                )
                if params.do_sample:
                    kwargs.update(
                        temperature=params.temperature, top_p=params.top_p, top_k=params.top_k
                    )
                if params.stop:
                    kwargs.update(stop_strings=list(params.stop), tokenizer=tokenizer)
                with torch.inference_mode():
                    output = model.generate(**inputs, **kwargs)
            except Exception as exc:  # any failure must end in a fallback, never a crash
                raise BackendError(f"transformers generation failed: {exc}") from exc
            prompt_len = inputs["input_ids"].shape[1]
            new_tokens = output[0, prompt_len:]
            text = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
            for stop in params.stop:
                text = text.split(stop)[0]
            return Generation(
                text=text.strip(),
                prompt_tokens=int(prompt_len),
                completion_tokens=int(new_tokens.shape[0]),
                seconds=time.perf_counter() - started,
            )
