from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from models.evaluation import evaluate, rules_score
from models.registry import Registry
from models.simulator import SimulatedStream
from models.training import TrainReport
from pizzashop.app.model_commands import score_lines

pytestmark = pytest.mark.slow  # trains models (the session's `trained` fixture)


def test_train_publishes_with_lineage(trained: tuple[Path, TrainReport]) -> None:
    root, report = trained
    assert set(report.versions) == {"fraud", "anomaly"}
    meta = Registry(root).load("fraud").metadata
    assert meta.training_data_hash.startswith("sha256:")
    assert meta.params["sim_seed"] == 3
    assert 0 < meta.metrics["val_pr_auc"] <= 1


def test_evaluate_reports_floats_on_the_held_out_period(trained: tuple[Path, TrainReport]) -> None:
    report = evaluate(trained[0])
    for key in ("pr_auc", "roc_auc", "calibration_error", "bayes_pr_auc", "rules_pr_auc"):
        assert isinstance(report["fraud"][key], float)
    for key in ("roc_auc", "isolation_forest_roc_auc"):
        assert isinstance(report["anomaly"][key], float)
    assert report["fraud"]["n"] == 2000  # the last 25% of 8000
    # even a small model beats random ranking and the rules on this stream
    assert report["fraud"]["roc_auc"] > 0.8
    assert report["fraud"]["pr_auc"] > report["fraud"]["rules_pr_auc"]
    assert report["anomaly"]["roc_auc"] > 0.9
    # worlds held out from training: three of them, each against its own Bayes-optimal score
    held_out = report["held_out"]
    assert held_out["n"] == 3 * (8000 // 3)  # as many orders as trained on, in three worlds
    for k in range(3):
        assert 0 < held_out[f"ratio_w{k}"] <= 1.2
        assert held_out[f"bayes_pr_auc_w{k}"] > 0
    assert held_out["min_ratio"] > 0.5
    assert "leave_one_out" not in report  # only with extended=True


def test_extended_evaluation_retrains_without_a_scenario_and_a_feature_group(
    trained: tuple[Path, TrainReport],
) -> None:
    from models._held_out import ablation_variants

    report = evaluate(trained[0], extended=True, extended_epochs=3)
    loo = report["leave_one_out"]
    assert {k.rsplit("_min_ratio", 1)[0] for k in loo if k.endswith("_min_ratio")} == {
        "card_testing",
        "stolen_card",
        "account_takeover",
        "promo_abuse",
    }
    ablation = report["ablation"]
    for variant in ablation_variants():
        assert 0 < ablation[f"{variant}_in_ratio"] <= 1.5
        assert 0 <= ablation[f"{variant}_min_recall_p80"] <= 1
    # the model without any velocity or sharing feature loses card testing and promo abuse
    assert ablation["without_velocity_held_out_min_ratio"] < ablation["all_held_out_min_ratio"]


def test_rules_fire_on_card_testing(stream: SimulatedStream) -> None:
    from models.feature_state import features_for_stream

    x = features_for_stream(stream.orders)
    r = rules_score(x)
    scenario = stream.truth.scenario
    assert r[scenario == 1].mean() > r[scenario == 0].mean() + 0.5


async def test_score_lines_reports_bad_lines_and_keeps_going(
    trained: tuple[Path, TrainReport], stream: SimulatedStream
) -> None:
    good = [o.model_dump_json() for o in stream.orders[:5]]
    lines = [
        good[0],
        "{not json",
        good[1],
        json.dumps({"order_id": "x"}),
        good[2],
        good[3],
        good[4],
    ]
    out = io.StringIO()
    bad = await score_lines(
        io.StringIO("\n".join(lines) + "\n"), out, Registry(trained[0]), batch_size=2
    )
    assert bad == 2
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["line"] for r in rows] == [1, 3, 5, 6, 7]
    assert [r["order_id"] for r in rows] == [o.order_id for o in stream.orders[:5]]
    assert all(0 <= r["fraud"]["probability"] <= 1 for r in rows)
    assert rows[0]["fraud"]["lineage"]["model"] == "fraud"
    assert rows[0]["fraud"]["lineage"]["version"] >= 1
    assert rows[0]["source_event_id"] == stream.orders[0].event_id
    assert 0 <= rows[0]["anomaly"]["percentile"] <= 100
