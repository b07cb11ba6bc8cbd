"""Decoding restricted to a set of texts: a token trie over the stage's candidate scripts.

In strict mode the customer only ever hears an approved script, so the LLM's real job there is
to *choose* one. Restricting each step to the tokens that continue some candidate text makes
every draft an approved script by construction, and the choice is made as soon as the prefix
names a single candidate: a few tokens instead of the ~45 a free draft takes.

The trie is over each text's own token ids (the tokenizer's encoding of the text alone, as the
model would write it right after the chat template's assistant header). Identical texts count
once. A text that is a prefix of another ends where the end-of-sequence token is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    choices: set[int] = field(default_factory=set)  # texts passing through (or ending) here
    ends: int | None = None  # the text that ends exactly here


class TokenTrie:
    """Allowed next tokens and the single matching text for a prefix of token ids."""

    def __init__(self, texts: Sequence[str], sequences: Sequence[Sequence[int]]):
        if not texts:
            raise ValueError("constrained decoding needs at least one choice")
        if len(texts) != len(sequences):
            raise ValueError("one token sequence per text")
        self.texts = tuple(texts)
        self.root = _Node()
        for index, ids in enumerate(sequences):
            if not ids:
                raise ValueError(f"choice {index} encodes to no tokens")
            node = self.root
            node.choices.add(index)
            for token in ids:
                node = node.children.setdefault(int(token), _Node())
                node.choices.add(index)
            if node.ends is None:  # a duplicate text keeps the first index
                node.ends = index

    @classmethod
    def from_tokenizer(cls, tokenizer, texts: Sequence[str]) -> TokenTrie:
        unique = list(dict.fromkeys(texts))
        sequences = [tokenizer.encode(text, add_special_tokens=False) for text in unique]
        return cls(unique, sequences)

    def node(self, prefix: Sequence[int]) -> _Node | None:
        node = self.root
        for token in prefix:
            node = node.children.get(token)
            if node is None:
                return None
        return node

    def allowed(self, prefix: Sequence[int]) -> tuple[list[int], bool]:
        """(tokens that continue a text, whether a text ends here) after ``prefix``."""
        node = self.node(prefix)
        if node is None:
            return [], False
        return list(node.children), node.ends is not None

    def unique(self, prefix: Sequence[int]) -> int | None:
        """The one text consistent with ``prefix``, or None while several still are."""
        node = self.node(prefix)
        if node is None:
            return None
        return next(iter(node.choices)) if len(node.choices) == 1 else None

    def first_consistent(self, prefix: Sequence[int]) -> int:
        """The lowest-index text consistent with ``prefix`` (the answer when decoding is cut
        short before the prefix was unique)."""
        node = self.node(prefix)
        return min(node.choices) if node is not None else 0
