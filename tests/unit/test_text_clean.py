"""clean_prompt follows the official order: ftfy, html.unescape x2, strip, collapse \\s+, strip."""

import pytest

from wanmoe.text.clean import clean_prompt


def test_double_escaped_html_entities():
    # spec §5.1: unescape twice, so `&amp;amp;` becomes `&`
    assert clean_prompt("salt &amp;amp; pepper") == "salt & pepper"
    assert clean_prompt("&lt;b&gt; &quot;x&quot;") == '<b> "x"'
    # with a literal tag ftfy leaves entities alone, so only the two unescapes get to `&`
    assert clean_prompt("<b>salt &amp;amp; pepper</b>") == "<b>salt & pepper</b>"


def test_whitespace_runs_collapse_to_one_space():
    assert clean_prompt("  a\t\tcat\n\n  walks\r\n") == "a cat walks"
    # Unicode spaces (no-break, ideographic, em) are `\s` too
    assert clean_prompt("\u00a0a\u3000cat\u2003walks\u00a0") == "a cat walks"


@pytest.mark.parametrize("broken, fixed", [
    # the ftfy README example (its default uncurls the restored quote)
    ("The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.", "The Mona Lisa doesn't have eyebrows."),
    ("cafÃ©", "café"),
])
def test_mojibake_is_repaired(broken, fixed):
    assert clean_prompt(broken) == fixed


def test_case_punctuation_and_underscores_kept():
    text = "A Cat, on_the BEACH! (sunset?) 猫が歩く。"
    assert clean_prompt(text) == text


def test_unescape_runs_after_ftfy_and_before_whitespace():
    # `&nbsp;` only becomes a space after unescaping; it must then be collapsed and stripped
    assert clean_prompt("&amp;nbsp;a &nbsp; b&nbsp;") == "a b"
