"""Prompt cleaning applied before tokenisation, in the official order (spec §5.1)."""

from __future__ import annotations

import html
import re

_WHITESPACE_RUN = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Fix mojibake, unescape HTML twice, collapse whitespace; case and punctuation are kept.

    Order (official `basic_clean` then `whitespace_clean`): ftfy.fix_text, html.unescape twice
    (so `&amp;amp;` becomes `&`), strip, every run of Unicode whitespace -> one space, strip.
    """
    import ftfy  # declared dependency; imported here to keep `import wanmoe` light

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = text.strip()
    text = _WHITESPACE_RUN.sub(" ", text)
    return text.strip()
