"""The issue's quality targets, on the default training run: in distribution (the later period of
the training worlds) and on simulated worlds held out from training (issue 11)."""

from __future__ import annotations

import pytest

from models.evaluation import evaluate
from models.simulator import SCENARIOS
from models.training import DEFAULT_TARGET_FALSE_HOLD_RATE, build_dataset, train

pytestmark = pytest.mark.slow  # trains the models with `pizzashop train`'s defaults


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    root = tmp_path_factory.mktemp("default-registry")
    data = build_dataset()  # built once for training and evaluation: the slow part
    train(root, progress=False, data=data)  # the defaults of `models.training.train`
    return evaluate(root, data=data)


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


def test_the_hold_threshold_meets_its_false_hold_rate(
    report: dict[str, dict[str, float]],
) -> None:
    hold = report["hold"]
    target = DEFAULT_TARGET_FALSE_HOLD_RATE
    assert hold["target_false_hold_rate"] == target
    # On validation, where it was chosen: at most the target, short of it by ~one order.
    assert target - 0.0005 <= hold["val_false_hold_rate"] <= target
    # On the later period and on held-out worlds it was not chosen on: within half again.
    assert hold["false_hold_rate"] <= 1.5 * target
    assert report["held_out"]["false_hold_rate"] <= 1.5 * target
    # Catching fraud at that rate: most of it overall, card testing nearly as well as the
    # Bayes-optimal score does at the same rate (some worlds' bursts start with a coin flip).
    assert hold["recall"] >= 0.6
    assert hold["recall_card_testing"] >= 0.9 * hold["bayes_recall_card_testing"]


def test_half_of_the_likely_frauds_are_held_in_every_scenario_in_distribution(
    report: dict[str, dict[str, float]],
) -> None:
    hold = report["hold"]
    found = {k: v for k, v in hold.items() if k.startswith("recall_p80_")}
    assert len(found) == len(SCENARIOS) - 1, found
    assert all(v >= 0.5 for v in found.values()), found


def test_fraud_is_near_bayes_optimal_on_every_held_out_world(
    report: dict[str, dict[str, float]],
) -> None:
    held_out = report["held_out"]
    ratios = {k: v for k, v in held_out.items() if k.startswith("ratio_w")}
    assert len(ratios) == 3
    assert all(v >= 0.9 for v in ratios.values()), ratios


def test_half_of_the_likely_frauds_are_held_in_every_scenario_on_held_out_worlds(
    report: dict[str, dict[str, float]],
) -> None:
    held_out = report["held_out"]
    found = {k: v for k, v in held_out.items() if k.startswith("recall_p80_")}
    assert len(found) == len(SCENARIOS) - 1, found
    assert all(v >= 0.5 for v in found.values()), found


def test_report_has_the_documented_shape(report: dict[str, dict[str, float]]) -> None:
    expected = {
        "fraud": {"pr_auc", "roc_auc", "calibration_error", "bayes_pr_auc", "rules_pr_auc"},
        "anomaly": {"roc_auc", "isolation_forest_roc_auc"},
        "upsell": {"hit_at_3", "popularity_hit_at_3"},
        "hold": {"threshold", "target_false_hold_rate", "val_false_hold_rate", "false_hold_rate"}
        | {f"recall_{name}" for name in SCENARIOS[1:]},
        "held_out": {"min_ratio", "false_hold_rate", "threshold"}
        | {f"recall_p80_{name}" for name in SCENARIOS[1:]}
        | {f"at_rate_recall_p80_{name}" for name in SCENARIOS[1:]},
    }
    for group, keys in expected.items():
        assert keys <= set(report[group])
        assert all(isinstance(report[group][k], float) for k in keys)
