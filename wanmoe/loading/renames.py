"""Template rename rules shared by the declarative key maps (`keymaps/t5.py`; `keymaps/dit.py` could use it),
and the wrapper prefixes single-file saves put in front of the names (any component).

A template is a whole tensor name with `{field}` holes, e.g. `blocks.{i}.attn.q.weight`. A rule pairs
a compiled source template with a target template; applying it fills the target's holes with what
the source's holes matched. Templates match whole names, so a table of distinct pairs is a bijection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# what each hole may match: `{i}` a block index, `{p}` a weight or bias
FIELDS: Mapping[str, str] = {"i": r"\d+", "p": r"weight|bias"}

Rule = tuple[re.Pattern, str]  # (compiled source template, target template)


def compile_template(template: str) -> re.Pattern:
    """Anchored regex of a template; each `{name}` of FIELDS becomes the named group `name`."""
    pattern = re.escape(template)
    for name, regex in FIELDS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{regex})")
    return re.compile(f"^{pattern}$")


def compile_rules(pairs: Iterable[tuple[str, str]]) -> tuple[Rule, ...]:
    """(source template, target template) pairs -> rules for `apply_rules`."""
    return tuple((compile_template(src), dst) for src, dst in pairs)


def apply_rules(name: str, rules: tuple[Rule, ...]) -> str | None:
    """Target name of the first rule whose source matches `name` whole; None when none does."""
    for pattern, target in rules:
        m = pattern.match(name)
        if m:
            return target.format(**m.groupdict())
    return None


# Prefixes some single-file saves put in front of the official names (longest first).
SAVE_PREFIXES: tuple[str, ...] = ("model.diffusion_model.", "diffusion_model.", "model.")


def strip_prefix(name: str, prefixes: tuple[str, ...] = SAVE_PREFIXES) -> str:
    """Remove one known wrapper prefix (`model.diffusion_model.` etc.); other names unchanged."""
    for pre in prefixes:
        if name.startswith(pre):
            return name[len(pre):]
    return name


def common_prefix(names) -> str:
    """The known prefix every name carries ("" if none): detect wrapped single-file saves."""
    names = list(names)
    for pre in SAVE_PREFIXES:
        if names and all(n.startswith(pre) for n in names):
            return pre
    return ""
