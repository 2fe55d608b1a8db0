"""Shared fixtures. Real datasets live in ../shared/data beside the checkout (not shipped)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def require_shared(*parts: str) -> Path:
    """Path to a file under ../shared/data; skip when absent unless GRU4REC_REQUIRE_SHARED_DATA=1."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("GRU4REC_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"shared data {path} is missing but GRU4REC_REQUIRE_SHARED_DATA=1")
        pytest.skip(f"shared data {path} not present")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models train fastest on one intra-op thread (and much faster on a busy 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rsc15_dir() -> Path:
    return require_shared("rsc15_100k")
