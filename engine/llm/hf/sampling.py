"""Choose the next token of one row from its logits, per the row's own GenerationParams.

The penalties come from transformers' logits processors (repetition penalty, no-repeat n-grams)
and apply per row, so rows with different parameters share one batch. They look at the reply's
own tokens only, not the prompt: a sales prompt names the offer, and penalising the prompt would
push the model away from the very words the approved scripts use.

Sampling is temperature, then top-k, then top-p (nucleus), as in ``model.generate``, but done on
the ``top_k`` best candidates instead of the whole vocabulary: transformers' warpers sort and
sample over all 49,152 SmolLM2 tokens each step, which costs about 5 ms a token on two cores,
a tenth of a decode step; the distribution sampled from is the same.

Each row samples from its own ``torch.Generator`` seeded with the request's seed, so a seeded
request draws the same reply whether it ran alone or in a batch of 32.
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

from engine.flow.generation import GenerationParams


class RowSampler:
    """Next-token choice for one request: greedy or seeded sampling after the penalties."""

    def __init__(self, params: GenerationParams, seed: int | None, device: torch.device):
        self.params = params
        penalties = LogitsProcessorList()
        if params.repetition_penalty != 1.0:
            penalties.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if params.no_repeat_ngram_size > 0:
            penalties.append(NoRepeatNGramLogitsProcessor(params.no_repeat_ngram_size))
        self.penalties = penalties
        self.generator: torch.Generator | None = None
        if params.do_sample:
            self.generator = torch.Generator(device=device)
            if seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(seed)

    def choose(
        self, logits: torch.Tensor, generated: list[int], allowed: list[int] | None = None
    ) -> int:
        """``logits``: the row's scores for the next position, shape ``[vocab]``. ``allowed``:
        the only tokens that may be chosen (constrained decoding); the penalties apply among
        them, unless they would rule out every one (no-repeat n-grams inside an approved text),
        in which case the unpenalised scores decide."""
        raw = logits.float()
        scores = raw.unsqueeze(0)
        if self.penalties and generated:
            ids = torch.tensor([generated], dtype=torch.long, device=scores.device)
            scores = self.penalties(ids, scores)
        scores = scores[0]
        if allowed is not None:
            index = torch.tensor(allowed, dtype=torch.long, device=scores.device)
            kept = scores[index]
            if not torch.isfinite(kept).any():
                kept = raw[index]
            scores = torch.full_like(scores, float("-inf")).index_copy_(0, index, kept)
        if self.generator is None:
            return int(scores.argmax())
        params = self.params
        if 0 < params.top_k < scores.shape[0]:
            values, indices = scores.topk(params.top_k)  # sorted, best first
        else:
            values, indices = scores.sort(descending=True)
        probs = torch.softmax(values / params.temperature, dim=-1)
        if params.top_p < 1.0:
            before = probs.cumsum(0) - probs  # mass of the better candidates
            probs = probs.masked_fill(before >= params.top_p, 0.0)  # the best one always stays
        pick = torch.multinomial(probs, 1, generator=self.generator)
        return int(indices[pick])
