"""Shared pieces of the text-encoder tests: random caption corpora for tiny tokenizers
(the error metric is `tolerance.rel_err`).

A plain module (not a conftest): test files import it by name, as `tests/` is on sys.path.
"""

from __future__ import annotations

import random


def captions(words: list[str], count: int, min_words: int, max_words: int, end: str = "") -> list[str]:
    """`count` seeded random captions of `min_words`..`max_words` words from `words`, each + `end`."""
    rng = random.Random(0)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words))) + end
            for _ in range(count)]
