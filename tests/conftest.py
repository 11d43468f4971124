import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

MANIFESTS = Path(__file__).resolve().parent / "data" / "manifests"


@pytest.fixture(scope="session")
def manifests_dir() -> Path:
    """Tensor manifests of the released checkpoints (names, shapes, dtypes), kept in the repository."""
    return MANIFESTS


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
