from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from search_tiny import TinyEnv, make_tiny_env  # noqa: E402


@pytest.fixture(scope="session")
def tiny_env(tmp_path_factory: pytest.TempPathFactory) -> TinyEnv:
    """A 16x16 supernet trained 2 steps and an estimated pixel8 LUT for it (a few seconds, once)."""
    return make_tiny_env(tmp_path_factory.mktemp("tiny-search"))
