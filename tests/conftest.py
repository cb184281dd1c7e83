"""Fixtures: one local Ray for the session, tiny synthetic data, the shared datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def ray_start_4_cpus():
    """A local Ray with 4 logical CPUs (2 cores here): Ray Data tasks beside Train workers."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip("../shared/data is absent (the real datasets are not part of the repository)")
    return SHARED


@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory) -> Path:
    """300 users, 400 items, 6,000 events (seconds to generate); read-only for tests."""
    from interest.data.synthetic import SyntheticConfig, generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(SyntheticConfig(users=300, items=400, events=6000, seed=7), str(out))
    return out


@pytest.fixture(scope="session")
def prepared_small(synthetic_small, tmp_path_factory, ray_start_4_cpus) -> Path:
    """``synthetic_small`` prepared with leave-last-one-out."""
    from interest.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("prepared") / "ds"
    prepare(PrepareConfig(input=str(synthetic_small / "events"), items=str(synthetic_small / "items.parquet"),
                          out=str(out)))
    return out
