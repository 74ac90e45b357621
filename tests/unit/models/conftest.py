from __future__ import annotations

from pathlib import Path

import pytest

from models.simulator import SimulatedStream, simulate
from models.training import TrainReport, train


@pytest.fixture(scope="session")
def stream() -> SimulatedStream:
    return simulate(3000, seed=7)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainReport]:
    """A small but real training run, shared by the tests that need published models."""
    root = tmp_path_factory.mktemp("registry")
    report = train(
        root,
        n_orders=8000,
        seed=3,
        progress=False,
        fraud_epochs=8,
        anomaly_epochs=8,
        with_upsell=False,
        n_worlds=2,  # the project's own world and one drawn from the family
    )
    return root, report
