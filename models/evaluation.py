"""Evaluation in distribution (the held-out later periods of the training worlds) and on
worlds held out from training altogether.

Fraud is compared with the Bayes-optimal score (the simulator's true ``fraud_prob``) and with
a hand-written rule baseline; anomaly with an IsolationForest fitted on the same rows and
features as the autoencoder. Nothing here feeds back into training.

``fraud``, ``hold`` and ``anomaly`` are in distribution. ``held_out`` is the same version on
worlds drawn outside the training family's box (``models._held_out``): PR-AUC over the
Bayes-optimal PR-AUC per world (``ratio_w<k>``, ``min_ratio``) and the recorded hold policy
there (``recall_p80_<scenario>``). With ``extended``, ``leave_one_out`` (a model trained
without one fraud family, scored on it) and ``ablation`` (a model without one feature group).

``hold`` applies the fraud version's recorded hold policy to the held-out period: the
false-hold rate it achieves on legitimate orders there, recall overall and per fraud scenario
(``recall_<scenario>``), the same for the orders whose true fraud probability is 0.8 or more
(``recall_p80_<scenario>``), and, for comparison, the recall the Bayes-optimal score reaches
at the same target rate (its threshold chosen on the held-out legitimate orders themselves).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score

from models._held_out import (
    HELD_OUT_ORDERS,
    ablations,
    build_held_out,
    held_out_report,
    hold_report,
    leave_one_scenario_out,
)
from models._nn import expected_calibration_error
from models.anomaly import AnomalyModel
from models.features import FEATURE_NAMES
from models.fraud import FraudModel
from models.registry import Registry
from models.training import (
    DEFAULT_TARGET_FALSE_HOLD_RATE,
    Dataset,
    build_dataset,
    normal_rows,
    torch_threads,
)

logger = logging.getLogger(__name__)
_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def rules_score(features: np.ndarray) -> np.ndarray:
    """An honest rule baseline, the kind a shop writes before it has a model.

    One point per rule fired: card velocity, card shared between accounts, device or address
    shared between accounts, a new card or device or address on a known account, a big basket
    from a new customer, an order well above the customer's usual, ordering late at night.
    """
    f = features
    c = _COL
    hour = (np.degrees(np.arctan2(f[:, c["hour_sin"]], f[:, c["hour_cos"]])) / 15.0) % 24
    rules = [
        f[:, c["card_orders_10m"]] >= 2,
        f[:, c["card_other_customers_24h"]] >= 1,
        f[:, c["device_other_customers_24h"]] >= 2,
        f[:, c["address_other_customers_24h"]] >= 2,
        f[:, c["new_card_for_customer"]] > 0,
        (f[:, c["new_device_for_customer"]] > 0) & (f[:, c["new_address_for_customer"]] > 0),
        (f[:, c["new_customer"]] > 0) & (f[:, c["log_total"]] > np.log1p(100.0)),
        f[:, c["spend_vs_usual"]] > np.log(2.5),
        (hour >= 23) | (hour < 6),
    ]
    return np.asarray(np.sum(rules, axis=0), dtype=np.float64)


def evaluate(
    registry_root: Path,
    n_orders: int | None = None,
    seed: int | None = None,
    progress: bool = False,
    data: Dataset | None = None,
    *,
    held_out: Dataset | None = None,
    extended: bool = False,
    extended_epochs: int = 12,
) -> dict[str, dict[str, float]]:
    """Metrics in distribution (the later periods of the training worlds) and on held-out
    worlds (``held_out``; default ``build_dataset`` of held-out worlds, see
    ``models._held_out``). Defaults rebuild the training worlds from the fraud model's
    metadata. ``extended`` adds the leave-one-scenario-out and ablation tables, which retrain
    the fraud model a dozen times (a minute or two)."""
    del progress  # evaluation is a few seconds; kept for a uniform command signature
    registry = Registry(registry_root)
    fraud_mv = registry.load("fraud")
    params = fraud_mv.metadata.params
    n_orders = n_orders or int(params["sim_n_orders"])
    seed = int(params["sim_seed"]) if seed is None else seed
    n_worlds = int(params.get("sim_n_worlds", 1))
    data = data or build_dataset(n_orders, seed, n_worlds)
    # as many held-out orders as trained on, up to HELD_OUT_ORDERS (a notebook's small mode
    # stays small)
    held_out = held_out or build_held_out(seed, min(HELD_OUT_ORDERS, n_orders))
    fraud = FraudModel.load(fraud_mv)
    anomaly = AnomalyModel.load(registry.load("anomaly"))
    x, truth, test = data.features, data.truth, data.test
    y = truth.is_fraud[test]
    p = fraud.predict(x[test])
    report: dict[str, dict[str, float]] = {
        "fraud": {
            "pr_auc": float(average_precision_score(y, p)),
            "roc_auc": float(roc_auc_score(y, p)),
            "calibration_error": expected_calibration_error(p, y),
            "bayes_pr_auc": float(average_precision_score(y, truth.fraud_prob[test])),
            "rules_pr_auc": float(average_precision_score(y, rules_score(x[test]))),
            "positives": float(y.sum()),
            "n": float(len(y)),
        },
    }
    report["hold"] = _evaluate_hold(fraud, p, data, fraud_mv.metadata.metrics)
    report["held_out"] = held_out_report(fraud, held_out)
    if extended:
        with torch_threads(1):  # a dozen small fits: threads only contend on the 2-core box
            report["leave_one_out"] = leave_one_scenario_out(
                data, held_out, seed, epochs=extended_epochs
            )
            report["ablation"] = ablations(data, held_out, seed, epochs=extended_epochs)
    ya = truth.is_anomaly[test]
    score, _ = anomaly.predict(x[test])
    forest = IsolationForest(n_estimators=200, random_state=seed)
    forest.fit(x[normal_rows(data, data.train)])
    report["anomaly"] = {
        "roc_auc": float(roc_auc_score(ya, score)),
        "pr_auc": float(average_precision_score(ya, score)),
        "isolation_forest_roc_auc": float(roc_auc_score(ya, -forest.score_samples(x[test]))),
        "positives": float(ya.sum()),
    }
    yh = held_out.truth.is_anomaly
    report["anomaly"]["held_out_roc_auc"] = float(
        roc_auc_score(yh, anomaly.predict(held_out.features)[0])
    )
    upsell = _evaluate_upsell(registry, data)
    if upsell is not None:
        report["upsell"] = upsell
    return report


def _evaluate_hold(
    fraud: FraudModel, p: np.ndarray, data: Dataset, trained: dict[str, float]
) -> dict[str, float]:
    """The recorded hold policy on the held-out period (see the module docstring)."""
    truth, test = data.truth, data.test
    if fraud.hold is None:  # a version from before hold policies: the old fixed threshold
        threshold, target = 0.9, DEFAULT_TARGET_FALSE_HOLD_RATE
    else:
        threshold, target = fraud.hold.threshold, fraud.hold.target_false_hold_rate
    out = {"threshold": threshold, "target_false_hold_rate": target}
    if "val_false_hold_rate" in trained:
        out["val_false_hold_rate"] = trained["val_false_hold_rate"]
    return out | hold_report(
        p, truth.is_fraud[test], truth.fraud_prob[test], truth.scenario[test], threshold, target
    )


def _evaluate_upsell(registry: Registry, data: Dataset) -> dict[str, float] | None:
    """``models.upsell.evaluate_upsell`` on the held-out baskets, histories from before them."""
    try:
        from models.upsell import UpsellModel, evaluate_upsell
    except ImportError:
        return None
    mv = registry.latest("upsell")
    if mv is None:
        return None
    baskets = data.stream.baskets()
    history: dict[str, list[str]] = {}
    _, _, test_start = data.bounds(0)
    for b in baskets[:test_start]:
        history.setdefault(b.customer_id, []).extend(b.skus)
    held_out = baskets[test_start:]
    result = evaluate_upsell(
        UpsellModel.load(mv.path),
        [b.skus for b in held_out],
        [b.customer_id for b in held_out],
        history,
    )
    return {k: float(v) for k, v in result.items()}


__all__ = ["evaluate", "rules_score"]
