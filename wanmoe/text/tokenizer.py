"""umT5 prompt tokenizer: a `tokenizers.Tokenizer` with the official call semantics (spec §5.1).

The official code calls `AutoTokenizer.from_pretrained(<ckpt>/google/umt5-xxl)` with
`padding='max_length', truncation=True, max_length=512, add_special_tokens=True`. That loads the
folder's `tokenizer.json` verbatim, which is what `load_tokenizer` does with the `tokenizers`
library (no transformers needed). Every prompt is cleaned first (`clean_prompt`), gets `</s>`
appended, is cut so that a long prompt keeps `text_len - 1` tokens plus `</s>`, and is padded with
id 0 (`<pad>`); the mask is 1 on the real tokens and the EOS.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from pathlib import Path

import torch

from wanmoe.errors import CheckpointError
from wanmoe.text.clean import clean_prompt

EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
_PROBE_TEXT = "a"  # any non-empty text: used to see which tokens the post-processor adds


class PromptTokenizer:
    """Cleans, tokenises, appends EOS, truncates and pads prompts like the official umT5 call."""

    def __init__(self, tokenizer, text_len: int = 512, source: str = "<in memory>") -> None:
        self.tokenizer = tokenizer  # tokenizers.Tokenizer
        self.text_len = text_len
        self.source = source
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.eos_id = self._special_id(EOS_TOKEN)
        pad = self.tokenizer.token_to_id(PAD_TOKEN)
        self.pad_id = 0 if pad is None else pad  # official padding id is 0 (`<pad>`)
        self._check_post_processor()

    def _special_id(self, token: str) -> int:
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise CheckpointError(
                f"tokenizer {self.source} has no {token!r} token; a umT5 tokenizer needs "
                f"<pad>=0, </s>=1, <unk>=2 (use the google/umt5-xxl tokenizer.json)")
        return idx

    def _check_post_processor(self) -> None:
        """The tokenizer's own post-processor may append `</s>` or nothing (we append it ourselves)."""
        plain = self.tokenizer.encode(_PROBE_TEXT, add_special_tokens=False).ids
        full = self.tokenizer.encode(_PROBE_TEXT, add_special_tokens=True).ids
        if full == plain or (full[: len(plain)] == plain and full[len(plain):] == [self.eos_id]):
            return
        raise CheckpointError(
            f"tokenizer {self.source} adds special tokens {full} around {plain} for {_PROBE_TEXT!r}; "
            f"the umT5 convention is to append only '</s>' (id {self.eos_id}) and no BOS")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_ids(self, text: str, text_len: int | None = None) -> list[int]:
        """Unpadded ids of one prompt: cleaned, cut to `text_len - 1` tokens, EOS appended."""
        text_len = self.text_len if text_len is None else text_len
        ids = self.tokenizer.encode(clean_prompt(text), add_special_tokens=False).ids
        return ids[:text_len - 1] + [self.eos_id]  # always `</s>`, like the official call

    def __call__(self, texts: list[str] | str, text_len: int | None = None):
        """Returns `(ids [B, text_len] int64, mask [B, text_len] int64)`."""
        text_len = self.text_len if text_len is None else text_len
        if text_len < 1:
            raise ValueError(f"text_len must be >= 1, got {text_len}")
        if isinstance(texts, str):
            texts = [texts]
        ids = torch.full((len(texts), text_len), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(texts), text_len), dtype=torch.int64)
        for row, text in enumerate(texts):
            seq = self.token_ids(text, text_len)
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
            mask[row, : len(seq)] = 1
        return ids, mask

    def save(self, path: str | Path) -> None:
        """Write the wrapped tokenizer as a `tokenizer.json` (e.g. after a spiece.model conversion)."""
        self.tokenizer.save(str(path))


@contextlib.contextmanager
def _rust_panics_as_errors(path: Path):
    """A malformed tokenizer.json can make the Rust `tokenizers` code panic while loading or on
    the probe encode; pyo3 raises that as `PanicException`, a BaseException, after printing a
    Rust backtrace on fd 2. Here it becomes one CheckpointError line, and fd 2 is kept quiet."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    except BaseException as e:  # noqa: BLE001 (re-raised unless it is a Rust panic)
        if type(e).__name__ != "PanicException":
            raise
        msg = str(e).splitlines()[0] if str(e) else "panic"
        raise CheckpointError(f"tokenizer {path} is malformed (the tokenizers library failed: "
                              f"{msg})") from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load_tokenizer(path: str | Path, text_len: int = 512) -> PromptTokenizer:
    """Load a umT5 tokenizer from a `tokenizer.json` file or a folder holding one (see
    `_load_tokenizer`); any failure of a malformed file is one CheckpointError line."""
    with _rust_panics_as_errors(Path(path)):
        return _load_tokenizer(path, text_len)


def _load_tokenizer(path: str | Path, text_len: int = 512) -> PromptTokenizer:
    """Load a umT5 tokenizer from a `tokenizer.json` file or a folder holding one.

    Folders: `<ckpt>/google/umt5-xxl`, a diffusers `tokenizer/`, a wanmoe folder. A folder with only
    `spiece.model` is converted through transformers (needs `sentencepiece` and `protobuf`).
    """
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_file():
        return PromptTokenizer(_read_tokenizer_json(Tokenizer, path), text_len, str(path))
    if not path.is_dir():
        raise CheckpointError(
            f"tokenizer path {path} does not exist; give a tokenizer.json file or a folder holding "
            f"tokenizer.json (e.g. <ckpt>/google/umt5-xxl or a diffusers tokenizer/ folder)")
    if (path / "tokenizer.json").is_file():
        return PromptTokenizer(_read_tokenizer_json(Tokenizer, path / "tokenizer.json"), text_len, str(path))
    if (path / "spiece.model").is_file():
        return PromptTokenizer(_convert_spiece(path), text_len, str(path / "spiece.model"))
    found = sorted(p.name for p in path.iterdir())[:10]
    inner = [str(path / s) for s in ("google/umt5-xxl", "tokenizer") if (path / s).is_dir()]
    hint = f"; did you mean {' or '.join(inner)}?" if inner else ""
    raise CheckpointError(
        f"tokenizer folder {path} has no usable tokenizer: expected tokenizer.json (preferred) or "
        f"spiece.model, found {found or 'nothing'}; copy the google/umt5-xxl tokenizer files into "
        f"it{hint}")


def _read_tokenizer_json(tokenizer_cls, file: Path):
    try:
        return tokenizer_cls.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable JSON
        raise CheckpointError(f"cannot read tokenizer file {file}: {exc}") from exc


def _convert_spiece(folder: Path):
    """Convert `<folder>/spiece.model` with transformers' SentencePiece converter."""
    needed = {"transformers": "transformers", "sentencepiece": "sentencepiece",
              "google.protobuf": "protobuf"}
    missing = [pip for mod, pip in needed.items() if not _importable(mod)]
    how_to_save = (f"python -c \"from wanmoe.text.tokenizer import load_tokenizer; "
                   f"load_tokenizer('{folder}').save('{folder / 'tokenizer.json'}')\"")
    if missing:
        raise CheckpointError(
            f"tokenizer folder {folder} has spiece.model but no tokenizer.json; converting it needs "
            f"{', '.join(needed.values())} (missing: {', '.join(missing)}). Either "
            f"`pip install {' '.join(missing)}` and run once: {how_to_save}, or copy tokenizer.json "
            f"from the google/umt5-xxl folder of the official Wan2.2 release into {folder}")
    from transformers import T5TokenizerFast

    try:
        backend = T5TokenizerFast.from_pretrained(str(folder)).backend_tokenizer
    except (ValueError, OSError, ImportError) as exc:
        raise CheckpointError(
            f"converting {folder / 'spiece.model'} with transformers failed: {exc}") from exc
    warnings.warn(
        f"converted {folder / 'spiece.model'} to a fast tokenizer with transformers; to skip this "
        f"step next time save it as tokenizer.json: {how_to_save}", stacklevel=3)
    return backend


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # parent package missing (e.g. `google` for google.protobuf)
        return False
