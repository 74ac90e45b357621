"""The fraud model: a small torch MLP, class-weighted, Platt-calibrated on a validation split.

pre: feature matrix → float32, NaNs zeroed. core: the network's logit (onnxruntime, eager torch
as fallback), standardisation inside the graph so the .onnx is self-contained. post: Platt
scaling → probability. Attributions: occlusion against the training mean, batched through the
same runner (B x F rows in one call), in logit units.

:class:`FraudScorer` is the model in the enrichment pipeline (``models.scorer``); its wire
assessment is ``FraudAssessment(probability=...)``.

:class:`HoldPolicy` is when an order is held: probability at or above a threshold chosen at
training time so that a target share of the validation period's legitimate orders would be held
(:func:`choose_hold_policy`). It is saved with the model version and applied by the enricher.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch import nn
from tqdm.auto import tqdm

from models._nn import (
    TorchModel,
    TorchScorer,
    export_onnx,
    fit_platt,
    fit_standardizer,
    sigmoid,
)
from models.features import FEATURE_NAMES, FRAUD_FEATURES, N_FEATURES
from models.registry import ModelVersion
from models.scorer import Degraded, Result, Scored, ScoringBatch, TopFeatures

logger = logging.getLogger(__name__)
NAME = "fraud"


class FraudNet(nn.Module):
    """Standardises the full feature vector, then reads only ``columns`` (names in
    FEATURE_NAMES; default FRAUD_FEATURES). The input stays the full vector, so the pipeline
    and the .onnx contract do not change with the columns a version reads."""

    def __init__(
        self,
        n_features: int = N_FEATURES,
        hidden: Sequence[int] = (64, 32),
        columns: Sequence[str] = FRAUD_FEATURES,
    ) -> None:
        super().__init__()
        self.hidden = tuple(hidden)
        self.columns = tuple(columns)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.cols: torch.Tensor
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        index = [FEATURE_NAMES.index(name) for name in self.columns]
        self.register_buffer("cols", torch.tensor(index, dtype=torch.long), persistent=False)
        layers: list[nn.Module] = []
        width = len(index)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.clamp((x - self.mean) / self.std, -10.0, 10.0)
        logits: torch.Tensor = self.mlp(z.index_select(-1, self.cols))
        return logits.squeeze(-1)


@dataclass(frozen=True, slots=True)
class Attributions:
    """Top features per row: names index into FEATURE_NAMES, values in the model's units."""

    index: np.ndarray  # int [n, k]
    value: np.ndarray  # float32 [n, k]

    def row(self, i: int) -> tuple[tuple[str, float], ...]:
        return tuple(
            (FEATURE_NAMES[j], round(float(v), 4))
            for j, v in zip(self.index[i], self.value[i], strict=True)
        )


def top_k(contrib: np.ndarray, k: int) -> Attributions:
    k = min(k, contrib.shape[1])
    idx = np.argsort(-np.abs(contrib), axis=1)[:, :k]
    return Attributions(idx, np.take_along_axis(contrib, idx, axis=1).astype(np.float32))


@dataclass(frozen=True, slots=True)
class HoldPolicy:
    """Hold an order when its fraud probability is at or above ``threshold``, the threshold
    that held at most ``target_false_hold_rate`` of the legitimate validation orders."""

    threshold: float
    target_false_hold_rate: float

    def holds(self, probability: np.ndarray) -> np.ndarray:
        return np.asarray(probability >= self.threshold)

    def params(self) -> dict[str, float]:
        """The registry params that record it (``FraudModel.save``)."""
        return {
            "hold_threshold": self.threshold,
            "target_false_hold_rate": self.target_false_hold_rate,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> HoldPolicy | None:
        """The recorded policy; ``None`` for a version published before policies were."""
        if "hold_threshold" not in params:
            return None
        return cls(float(params["hold_threshold"]), float(params["target_false_hold_rate"]))


def hold_threshold(legit: np.ndarray, target_false_hold_rate: float) -> float:
    """The lowest threshold that holds at most ``target_false_hold_rate`` of ``legit`` (the
    legitimate orders' scores): just above the (k+1)-th highest, k = floor(rate * n). Ties are
    never split, so the rate achieved may be lower than the target, never higher."""
    if not 0.0 < target_false_hold_rate < 1.0:
        raise ValueError(f"a false-hold rate is in (0, 1), not {target_false_hold_rate}")
    ranked = np.sort(np.asarray(legit, dtype=np.float64))[::-1]
    if len(ranked) == 0:
        raise ValueError("no legitimate orders to choose a hold threshold on")
    k = int(np.floor(target_false_hold_rate * len(ranked) + 1e-9))
    if k >= len(ranked):
        return float(ranked[-1])
    return float(np.nextafter(ranked[k], np.inf))


def hold_rates(
    probability: np.ndarray,
    is_fraud: np.ndarray,
    threshold: float,
    scenario: np.ndarray | None = None,
    scenario_names: Sequence[str] = (),
) -> dict[str, float]:
    """``false_hold_rate`` (held share of legitimate orders) and ``recall`` (held share of
    frauds) at ``threshold``; with ``scenario`` (index into ``scenario_names``, 0 is normal),
    ``recall_<name>`` per fraud scenario present."""
    held = np.asarray(probability) >= threshold
    y = np.asarray(is_fraud, dtype=bool)
    out = {
        "false_hold_rate": float(held[~y].mean()) if (~y).any() else 0.0,
        "recall": float(held[y].mean()) if y.any() else 0.0,
    }
    if scenario is not None:
        for i, name in enumerate(scenario_names):
            rows = y & (np.asarray(scenario) == i)
            if i > 0 and rows.any():
                out[f"recall_{name}"] = float(held[rows].mean())
    return out


def choose_hold_policy(
    probability: np.ndarray, is_fraud: np.ndarray, target_false_hold_rate: float
) -> tuple[HoldPolicy, dict[str, float]]:
    """The policy for ``target_false_hold_rate`` on validation scores, and what it achieved
    there (``val_false_hold_rate``, ``val_recall_at_hold``)."""
    y = np.asarray(is_fraud, dtype=bool)
    policy = HoldPolicy(
        hold_threshold(probability[~y], target_false_hold_rate), target_false_hold_rate
    )
    rates = hold_rates(probability, y, policy.threshold)
    return policy, {
        "val_false_hold_rate": rates["false_hold_rate"],
        "val_recall_at_hold": rates["recall"],
    }


class FraudModel(TorchModel):
    name = NAME

    def __init__(
        self,
        net: FraudNet,
        platt: tuple[float, float],
        *,
        version: int = 0,
        onnx_path: Path | None = None,
        prefer_onnx: bool = True,
        hold: HoldPolicy | None = None,
    ) -> None:
        super().__init__(net, version=version, onnx_path=onnx_path, prefer_onnx=prefer_onnx)
        self.net: FraudNet = net
        self.platt = platt
        self.hold = hold  # set by training once the validation scores are known

    def core(self, x: np.ndarray) -> np.ndarray:
        return self.runner(x)[0]

    def post(self, logits: np.ndarray) -> np.ndarray:
        a, b = self.platt
        return sigmoid(a * logits.astype(np.float64) + b)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.post(self.core(self.pre(features)))

    def explain(self, x: np.ndarray, logits: np.ndarray, k: int = 3) -> Attributions:
        """Occlusion: logit minus the logit with one feature set to its training mean."""
        n, f = x.shape
        mean = self.net.mean.numpy()
        occluded = np.repeat(x[:, None, :], f, axis=1)
        occluded[:, np.arange(f), np.arange(f)] = mean
        out = self.core(occluded.reshape(n * f, f)).reshape(n, f)
        return top_k(logits[:, None] - out, k)

    def warm_up(self) -> None:
        self.predict(np.zeros((8, N_FEATURES), dtype=np.float32))

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: Path) -> dict[str, Any]:
        torch.save(self.net.state_dict(), folder / f"{NAME}.pt")
        export_onnx(self.net, N_FEATURES, folder / f"{NAME}.onnx", ["logit"])
        return {
            "platt_a": self.platt[0],
            "platt_b": self.platt[1],
            "hidden": list(self.net.hidden),
            "feature_names": list(FEATURE_NAMES),
            "columns": list(self.net.columns),
            **(self.hold.params() if self.hold is not None else {}),
        }

    @classmethod
    def load(cls, mv: ModelVersion, *, prefer_onnx: bool = True) -> FraudModel:
        params = mv.metadata.params
        # a version from before column selection read every feature
        net = FraudNet(hidden=params["hidden"], columns=params.get("columns", FEATURE_NAMES))
        net.load_state_dict(torch.load(mv.path / f"{NAME}.pt", weights_only=True))
        return cls(
            net,
            (params["platt_a"], params["platt_b"]),
            version=mv.version,
            onnx_path=mv.path / f"{NAME}.onnx",
            prefer_onnx=prefer_onnx,
            hold=HoldPolicy.from_params(params),
        )

    @classmethod
    def dummy(cls) -> FraudModel:
        """Deterministic weights (seed 0), identity calibration, eager torch: for tests."""
        torch.manual_seed(0)
        return cls(FraudNet(hidden=(8,)), (1.0, 0.0), version=0, prefer_onnx=False)


class FraudScorer(TorchScorer[FraudModel, np.ndarray]):
    """Fraud in the pipeline: raw is the logit per order, attributions are occlusion deltas."""

    name = NAME

    @classmethod
    def load(cls, artifact: ModelVersion, *, prefer_onnx: bool = True) -> FraudScorer:
        return cls(FraudModel.load(artifact, prefer_onnx=prefer_onnx))

    @property
    def hold(self) -> HoldPolicy | None:
        """The version's recorded hold policy (``None`` if it predates them)."""
        return self.model.hold

    def core(self, inputs: np.ndarray) -> np.ndarray:
        return self.model.core(inputs)

    def explain(self, inputs: np.ndarray, raw: np.ndarray, k: int) -> list[TopFeatures]:
        attributions = self.model.explain(inputs, raw, k)
        return [attributions.row(i) for i in range(len(inputs))]

    def post(self, raw: np.ndarray, batch: ScoringBatch) -> list[Result]:
        return [
            Scored({"probability": p}) if math.isfinite(p) else Degraded(f"probability {p}")
            for p in self.model.post(raw).tolist()
        ]


def train_fraud(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    seed: int = 0,
    epochs: int = 30,
    progress: bool = True,
    columns: Sequence[str] = FRAUD_FEATURES,
) -> tuple[FraudModel, dict[str, float]]:
    """Fit the MLP (best epoch by validation PR-AUC), then Platt-calibrate on validation.
    ``y_train`` may be labels or probabilities (soft targets); ``y_val`` are labels.
    ``columns`` are the features it reads (the ablations drop groups of them)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = FraudNet(columns=columns)
    mean, std = fit_standardizer(x_train)
    net.mean.copy_(torch.from_numpy(mean))
    net.std.copy_(torch.from_numpy(std))
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.float32))
    xv = torch.from_numpy(x_val)
    pos = max(float(y_train.sum()), 1.0)
    # class weight: fraud is ~2% of orders; a capped weight keeps gradients from the rare class
    pos_weight = torch.tensor(min((len(y_train) - pos) / pos, 20.0))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    best, best_state, bar = -1.0, None, tqdm(range(epochs), desc="fraud", disable=not progress)
    for _ in bar:
        net.train()
        for idx in torch.split(torch.randperm(len(xt), generator=gen), 512):
            opt.zero_grad()
            loss = loss_fn(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        net.eval()
        with torch.inference_mode():
            val_logits = net(xv).numpy()
        ap = float(average_precision_score(y_val, val_logits))
        bar.set_postfix(val_pr_auc=round(ap, 4))
        if ap > best:
            best, best_state = ap, {k: v.clone() for k, v in net.state_dict().items()}
    assert best_state is not None
    net.load_state_dict(best_state)
    net.eval()
    with torch.inference_mode():
        val_logits = net(xv).numpy()
    platt = fit_platt(val_logits, y_val)
    logger.info("fraud model trained", extra={"val_pr_auc": best, "platt": platt})
    return FraudModel(net, platt, prefer_onnx=False), {"val_pr_auc": best}


__all__ = [
    "Attributions",
    "FraudModel",
    "FraudNet",
    "FraudScorer",
    "HoldPolicy",
    "choose_hold_policy",
    "hold_rates",
    "hold_threshold",
    "top_k",
    "train_fraud",
]
