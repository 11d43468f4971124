"""Tiny checkpoints in every supported release layout, written once per test session."""

import pytest

from wanmoe.testing.tiny import (convert_to_diffusers_layout, write_tiny_official_a14b,
                                 write_tiny_official_ti2v5b)



@pytest.fixture(scope="session")
def a14b_dir(tmp_path_factory):
    return write_tiny_official_a14b(tmp_path_factory.mktemp("Wan2.2-T2V-A14B"), seed=0)


@pytest.fixture(scope="session")
def a14b_diffusers_dir(a14b_dir, tmp_path_factory):
    return convert_to_diffusers_layout(a14b_dir, tmp_path_factory.mktemp("Wan2.2-T2V-A14B-Diffusers"))


@pytest.fixture(scope="session")
def ti2v_dir(tmp_path_factory):
    return write_tiny_official_ti2v5b(tmp_path_factory.mktemp("Wan2.2-TI2V-5B"), seed=0)


@pytest.fixture  # shared by test_errors.py and test_hostile_inputs.py
def no_weight_reads(monkeypatch):
    """Fail loudly if any weights are loaded or any tensor data is read."""
    import wanmoe.loading.components as components
    import wanmoe.loading.sources as sources

    def boom(*_a, **_k):
        raise AssertionError("weights were read before the input was validated")

    for name in ("load_dit", "load_text_encoder", "load_vae"):
        monkeypatch.setattr(components, name, boom)
    for cls in (sources.SafetensorsFile, sources.PickleSource):
        monkeypatch.setattr(cls, "get", boom)
