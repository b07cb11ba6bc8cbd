"""Generation parameters for LLM stages, validated where they are declared.

Defaults are tuned for short sales replies from a small model. What each parameter does to a
sales reply (in strict compliance mode the draft is only matched to an approved script, so these
shape which script wins, and how fast):

- ``temperature`` (0.7): how adventurous the wording is. Lower it (0.3) when replies sound
  monotone-but-wrong or drift off the offer; raise it when every call hears the same script.
  Near-greedy, reproducible replies: ``temperature: 0.01`` (or ``do_sample: false``).
- ``top_p`` (0.9) and ``top_k`` (50): cut the unlikely tail of the vocabulary, which is where a
  135M model's invented prices and odd words come from. Lower them for safer drafts.
- ``do_sample`` (true): false decodes greedily: the same prompt always gives the same draft
  (useful for tests and A/B arms that must not vary by chance).
- ``num_beams`` (1): beam search. Rarely worth it for replies: several times slower, blander
  text, and the in-process backend then skips its KV-cache reuse.
- ``repetition_penalty`` (1.2): divides the score of tokens the reply already contains. Raise it
  (1.3) when drafts repeat themselves ("great great great"); too high (> 1.5) garbles product
  names that must appear twice. It applies to the reply's own tokens, not the prompt, so the
  model may still quote the offer it was told about.
- ``no_repeat_ngram_size`` (6): forbids the reply from repeating any 6-token phrase it already
  said. 0 turns it off; small values (2-3) make sentences ungrammatical.
- ``max_new_tokens`` (48): the length cap, and the main latency knob: on two CPU cores each
  token costs 20-70 ms, so 40 tokens are most of a turn's budget. One or two sentences fit in 48.
- ``stop`` (none): end the draft at any of these strings (e.g. a newline) and save the tokens.
- ``deadline_s`` (8.0): the stage's time budget for the backend, queueing included. A backend
  that has not answered by then (a hung server, a saturated model) fails with ``BackendError``
  and the customer hears the stage's fallback script instead: a short fallback beats silence.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class GenerationOverrides(BaseModel):
    """A partial ``generation:`` block as written in YAML; bounds are checked per field."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=5, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass, in (0, 1].")
    top_k: int | None = Field(
        None, ge=0, description="Sample from the k most likely tokens; 0 = off."
    )
    do_sample: bool | None = Field(None, description="Sample (true) or decode greedily (false).")
    num_beams: int | None = Field(None, ge=1, le=8, description="Beam search width; 1 = no beams.")
    repetition_penalty: float | None = Field(
        None, ge=1, le=3, description="Penalty >= 1 on tokens already generated."
    )
    no_repeat_ngram_size: int | None = Field(
        None, ge=0, description="Forbid repeating any n-gram of this size; 0 = off."
    )
    max_new_tokens: int | None = Field(None, ge=1, le=1024, description="Reply length cap.")
    stop: list[str] | None = Field(None, description="Stop generating at any of these strings.")
    deadline_s: float | None = Field(
        None, gt=0, le=120, description="Seconds the backend may take before the fallback is sent."
    )


class GenerationParams(BaseModel):
    """Fully resolved generation parameters, as passed to a backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0, le=5)
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(50, ge=0)
    do_sample: bool = True
    num_beams: int = Field(1, ge=1, le=8)
    repetition_penalty: float = Field(1.2, ge=1, le=3)
    no_repeat_ngram_size: int = Field(6, ge=0)
    max_new_tokens: int = Field(48, ge=1, le=1024)
    stop: tuple[str, ...] = ()
    deadline_s: float = Field(8.0, gt=0, le=120)

    @model_validator(mode="after")
    def _sampling_needs_temperature(self) -> GenerationParams:
        if self.do_sample and self.temperature <= 0:
            raise ValueError(
                "temperature must be > 0 when do_sample is true "
                "(use do_sample: false, or temperature: 0.01, for near-greedy replies)"
            )
        return self

    def merged(self, overrides: GenerationOverrides | None) -> GenerationParams:
        """These parameters with the fields set in ``overrides`` replaced (validated again)."""
        if overrides is None:
            return self
        data = self.model_dump()
        data.update(overrides.model_dump(exclude_none=True))
        return GenerationParams.model_validate(data)
