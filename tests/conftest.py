"""Shared test set-up.

Fixture modules of each area live in tests/fixtures/ and are listed in `pytest_plugins`.
`TOOLCHAIN_REQUIRE_ALL=1` (set by `just test` and CI) turns every "prerequisite missing" skip into a
failure: in CI no check may silently not run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins: list[str] = ["tests.fixtures.data", "tests.fixtures.train", "tests.fixtures.sshd",
                             "tests.fixtures.emulated", "tests.fixtures.deploy", "tests.fixtures.pipeline",
                             "tests.fixtures.servers"]

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def require(condition: bool, reason: str) -> None:
    """Skip when a prerequisite is missing, but fail instead under TOOLCHAIN_REQUIRE_ALL=1."""
    if condition:
        return
    if os.environ.get("TOOLCHAIN_REQUIRE_ALL") == "1":
        pytest.fail(f"prerequisite missing (TOOLCHAIN_REQUIRE_ALL=1): {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fashion_mnist_root() -> Path:
    """Debian's dataset-fashion-mnist folder (installed by scripts/bootstrap)."""
    require((FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
            "dataset-fashion-mnist is not installed (scripts/bootstrap installs it)")
    return FASHION_MNIST


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two cores: keep torch from oversubscribing when tests run model code.
    import torch

    torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _pass_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # A pass cache of this session's own: results of another session (or of older code) are never reused.
    folder = tmp_path_factory.mktemp("pass-cache")
    previous = os.environ.get("TOOLCHAIN_PASS_CACHE")
    os.environ["TOOLCHAIN_PASS_CACHE"] = str(folder)
    yield
    if previous is None:
        os.environ.pop("TOOLCHAIN_PASS_CACHE", None)
    else:
        os.environ["TOOLCHAIN_PASS_CACHE"] = previous
