"""`wanmoe generate` on the demo model names the prompt's words the demo was never trained on."""

import pytest

from wanmoe import cli
from wanmoe.pipeline import DEMO_DIR

NOTE = "note: the demo model does not know these words: "
ARGS = ["--steps", "1", "--seed", "0", "--quiet"]


@pytest.mark.skipif(not (DEMO_DIR / "wanmoe.json").is_file(), reason="demo model assets not installed")
def test_demo_generate_notes_unknown_words_on_stderr(tmp_path, capsys):
    rc = cli.main(["generate", "A red ball, shiny, on a MAUVE background", *ARGS,
                   "--out", str(tmp_path / "a.mp4")])
    assert rc == 0
    err = capsys.readouterr().err.splitlines()
    notes = [line for line in err if line.startswith("note:")]
    assert notes == [NOTE + "shiny, mauve"]
    rc = cli.main(["generate", "a red ball moves to the right on a black background", *ARGS,
                   "--out", str(tmp_path / "b.mp4")])
    assert rc == 0
    assert "note:" not in capsys.readouterr().err


def test_no_note_for_other_models(a14b_dir, tmp_path, capsys):
    rc = cli.main(["generate", "a purple kangaroo", "--ckpt-dir", str(a14b_dir), "--size", "64*64",
                   "--frames", "5", "--steps", "1", "--device", "cpu", "--quiet",
                   "--out", str(tmp_path / "k.mp4")])
    assert rc == 0
    assert "note:" not in capsys.readouterr().err
