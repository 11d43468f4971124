"""Fuzz the JSON files a checkpoint carries (config.json, *.safetensors.index.json, wanmoe.json,
tokenizer.json): every mutation resolves to a typed, consistent model or is refused with a
WanmoeError naming the file; never another exception."""

import json
import shutil

import pytest
from fuzzlib import COUNTS, INTERESTING, byte_mutation, fuzz_settings, run_case
from hypothesis import given
from hypothesis import strategies as st

from wanmoe.loading.checkpoint import resolve_checkpoint
from wanmoe.loading.json_files import check_types
from wanmoe.testing.tiny import convert_to_wanmoe_layout, write_tiny_official_a14b
from wanmoe.text.tokenizer import load_tokenizer

N_STRUCT, N_BYTES, N_TOKENIZER = 120, 60, 80

LEAVES = st.one_of(st.sampled_from(INTERESTING + [-1, 3, 7, 0.5, 1e-6, 1e308, -0.0]), st.none(),
                   st.booleans(), st.text(max_size=4), st.integers(-5, 600),
                   st.sampled_from(["256", "2", "[1,2,2]", "wanmoe", "t2v-A14B", "high_noise"]),
                   st.lists(st.integers(-1, 8), max_size=4), st.just({}), st.just([]))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("json")
    official = write_tiny_official_a14b(base / "official", seed=0)
    wanmoe_dir = convert_to_wanmoe_layout(official, base / "wanmoe")
    return {"official": official, "wanmoe": wanmoe_dir}


def _paths(obj, prefix=()):
    """Every key path into a JSON value (dicts and lists), the root included."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list) and len(obj) <= 8:
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@st.composite
def json_edit(draw, doc):
    """Replace or delete the value at a drawn key path (or the whole document)."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        value = draw(LEAVES)
        if not path:
            return value
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if draw(st.integers(0, 4)) == 0 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return doc


def _resolve_checked(root, parts=None):
    """resolve_checkpoint (headers and JSON only); `parts`: safetensors T5/VAE/tokenizer to use
    instead of the folder's .pth files, which cost 40 ms a case to open."""
    spec = resolve_checkpoint(root, **(parts or {}))
    check_types(spec.preset, root)  # a resolved preset is typed and consistent
    assert spec.preset.dit.dim % spec.preset.dit.num_heads == 0
    return spec


def _parts(roots) -> dict:
    w = roots["wanmoe"]
    return {"text_encoder": w / "text_encoder.safetensors", "vae": w / "vae.safetensors",
            "tokenizer": w / "tokenizer.json"}


def _fuzz_json_file(kind, root, rel, fuzz_dir, n, edits_of, parts=None):
    src = root / rel
    original = src.read_bytes()
    start = COUNTS.get(kind, 0)

    @fuzz_settings(n)
    @given(text=edits_of(json.loads(original), original))
    def run(text):
        src.write_bytes(text)
        run_case(kind, src, lambda _p: _resolve_checked(root, parts))

    try:
        run()
    finally:
        src.write_bytes(original)
    assert COUNTS[kind] - start >= n * 0.9


def _structured(doc, _raw):
    return json_edit(doc).map(lambda d: json.dumps(d).encode())


def _bytes(_doc, raw):
    return byte_mutation(raw, hot=len(raw))


@pytest.mark.parametrize("rel", ["high_noise_model/config.json",
                                 "high_noise_model/diffusion_pytorch_model.safetensors.index.json"])
def test_fuzz_official_json(roots, fuzz_dir, rel):
    _fuzz_json_file("json", roots["official"], rel, fuzz_dir, N_STRUCT, _structured, _parts(roots))


def test_fuzz_wanmoe_json(roots, fuzz_dir):
    _fuzz_json_file("json", roots["wanmoe"], "wanmoe.json", fuzz_dir, N_STRUCT, _structured)
    _fuzz_json_file("json", roots["wanmoe"], "wanmoe.json", fuzz_dir, N_BYTES, _bytes)


def test_fuzz_tokenizer_json(roots, fuzz_dir):
    src = roots["official"] / "google" / "umt5-xxl" / "tokenizer.json"
    original = src.read_bytes()
    start = COUNTS.get("json", 0)

    @fuzz_settings(N_TOKENIZER)
    @given(text=st.one_of(json_edit(json.loads(original)).map(lambda d: json.dumps(d).encode()),
                          byte_mutation(original, hot=len(original))))
    def run(text):
        path = fuzz_dir / "tokenizer.json"
        path.write_bytes(text)
        run_case("json", path, lambda p: load_tokenizer(p, text_len=16)("a red ball"))

    run()
    assert COUNTS["json"] - start >= N_TOKENIZER * 0.9


@pytest.mark.parametrize("rel,text", [
    ("high_noise_model/config.json", "[]"),
    ("high_noise_model/config.json", '{"dim": 256, "num_heads": 3}'),
    ("high_noise_model/config.json", '{"num_layers": "2"}'),
    ("high_noise_model/config.json", '{"num_layers": true}'),
    ("high_noise_model/diffusion_pytorch_model.safetensors.index.json",
     '{"weight_map": {"x": "../../etc/passwd"}}'),
    ("google/umt5-xxl/tokenizer.json", "[]"),
])
def test_listed_bad_json_is_refused(roots, tmp_path, rel, text):
    root = shutil.copytree(roots["official"], tmp_path / "ckpt")
    (root / rel).write_text(text)
    assert run_case("json-listed", root / rel, lambda _p: _resolve_checked(root)) is None


def test_official_folder_resolves(roots):
    assert _resolve_checked(roots["official"], _parts(roots)).preset.name == "t2v-A14B"


@pytest.mark.parametrize("experts", [[], {}, [{"name": "middle", "guidance": 1.0}]])
def test_wanmoe_json_with_no_or_unknown_experts(roots, tmp_path, experts):
    """Found by the long fuzz run: an empty expert list used to escape as StopIteration."""
    root = shutil.copytree(roots["wanmoe"], tmp_path / "wm")
    meta = json.loads((root / "wanmoe.json").read_text())
    meta["preset"]["experts"] = experts
    (root / "wanmoe.json").write_text(json.dumps(meta))
    assert run_case("json-listed", root / "wanmoe.json", lambda _p: _resolve_checked(root)) is None


@pytest.mark.parametrize("key,value", [("num_heads", 0), ("num_layers", -2), ("eps", float("nan")),
                                       ("dim", 256.0)])
def test_wanmoe_json_with_bad_dit_values(roots, tmp_path, key, value):
    """Found by the long fuzz run: num_heads 0 used to escape as ZeroDivisionError."""
    root = shutil.copytree(roots["wanmoe"], tmp_path / "wm")
    meta = json.loads((root / "wanmoe.json").read_text())
    meta["preset"]["dit"][key] = value
    (root / "wanmoe.json").write_text(json.dumps(meta))
    assert run_case("json-listed", root / "wanmoe.json", lambda _p: _resolve_checked(root)) is None
