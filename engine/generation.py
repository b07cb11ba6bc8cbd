"""Generation parameters for LLM stages, validated where they are declared.

Defaults are tuned for short sales replies from a small model: sampling keeps replies from
sounding canned, ``repetition_penalty`` and ``no_repeat_ngram_size`` stop SmolLM-sized models from
looping ("great great great"), and ``max_new_tokens`` bounds latency (about 14 tokens/s on two
CPU cores with transformers fp32). For near-greedy, reproducible replies use ``temperature: 0.01``
or ``do_sample: false``.
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
