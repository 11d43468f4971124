"""The words the built-in demo model was trained on, and the words of a prompt it was not.

The demo model only ever saw captions written by `wanmoe.demo.clips.caption`, so its vocabulary
is the caption generator's word lists (`clips.caption_words`), nothing typed by hand here. A
word can be known in one role only: "white" names an object colour; it is a background word only
when the generator draws white backgrounds. `unknown_words` therefore also checks the words
between "on a" / "over a" and "background" / "backdrop" against the background words, and the
words in front of a shape against the object colours and sizes.
"""

from __future__ import annotations

import re

from wanmoe.demo.clips import caption_words

# English function words a prompt may use that carry nothing the demo could draw; never reported.
FUNCTION_WORDS = frozenset(
    "a an the of in on at to and or with its it is are be being very some one two which that "
    "this there into onto over from by for while as then slowly quickly".split())
_BACKDROP_NOUNS = ("background", "backdrop")
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script; punctuation splits words


def known_words() -> list[str]:
    """Every word of the demo model's training captions, sorted."""
    return sorted(set().union(*caption_words().values()))


def _words(prompt: str) -> list[str]:
    return _WORD.findall(prompt.lower())


def unknown_words(prompt: str) -> list[str]:
    """The words of `prompt` the demo model was never trained on (in prompt order, once each).

    Case and punctuation are ignored, and so are function words ("the", "with", ...) unless
    they stand where a colour or a background name should. A known word in a role it was never
    trained in counts as unknown: "white" in "on a white background" when no white background
    was in the training clips.
    """
    roles = caption_words()
    known = set().union(*roles.values())
    # a run of modifiers in front of a noun ends at a function word, a verb or another noun
    stop = FUNCTION_WORDS | roles["other"] | roles["shape"] | {"against"}
    words = _words(prompt)
    flagged: set[int] = set()
    for i, w in enumerate(words):
        allowed = (roles["background"] if w in _BACKDROP_NOUNS
                   else roles["colour"] | roles["size"] if w in roles["shape"] else None)
        if allowed is not None:  # "on a light gray background", "a big red ball"
            j = i - 1
            while j >= 0 and words[j] not in stop:
                if words[j] not in allowed:
                    flagged.add(j)
                j -= 1
        elif w not in known and w not in FUNCTION_WORDS:
            flagged.add(i)
    out: list[str] = []
    for i in sorted(flagged):
        if words[i] not in out:
            out.append(words[i])
    return out


def unknown_words_note(prompts: list[str]) -> str | None:
    """The one-line note `wanmoe generate` prints for the demo model, or None when every word
    of every prompt is known."""
    seen: list[str] = []
    for p in prompts:
        seen += [w for w in unknown_words(p) if w not in seen]
    if not seen:
        return None
    return "note: the demo model does not know these words: " + ", ".join(seen)
