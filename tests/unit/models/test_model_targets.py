"""The issue's quality targets, on the default training run and its held-out later period."""

from __future__ import annotations

import pytest

from models.evaluation import evaluate
from models.training import train

pytestmark = pytest.mark.slow  # trains the models with `pizzashop train`'s defaults


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    root = tmp_path_factory.mktemp("default-registry")
    train(root, progress=False)  # the defaults `pizzashop train` uses
    return evaluate(root)


def test_fraud_is_near_bayes_optimal_and_well_above_rules(
    report: dict[str, dict[str, float]],
) -> None:
    fraud = report["fraud"]
    assert fraud["pr_auc"] >= 0.9 * fraud["bayes_pr_auc"]
    assert fraud["pr_auc"] >= 1.5 * fraud["rules_pr_auc"]
    assert fraud["calibration_error"] < 0.02


def test_anomaly_beats_isolation_forest(report: dict[str, dict[str, float]]) -> None:
    anomaly = report["anomaly"]
    assert anomaly["roc_auc"] >= 0.95
    assert anomaly["roc_auc"] > anomaly["isolation_forest_roc_auc"]


def test_upsell_doubles_popularity(report: dict[str, dict[str, float]]) -> None:
    upsell = report["upsell"]
    assert upsell["hit_at_3"] >= 2 * upsell["popularity_hit_at_3"]


def test_report_has_the_documented_shape(report: dict[str, dict[str, float]]) -> None:
    expected = {
        "fraud": {"pr_auc", "roc_auc", "calibration_error", "bayes_pr_auc", "rules_pr_auc"},
        "anomaly": {"roc_auc", "isolation_forest_roc_auc"},
        "upsell": {"hit_at_3", "popularity_hit_at_3"},
    }
    for group, keys in expected.items():
        assert keys <= set(report[group])
        assert all(isinstance(report[group][k], float) for k in keys)
