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
