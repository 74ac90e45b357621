"""The anomaly model: a torch autoencoder trained on normal traffic only.

core returns the per-feature squared reconstruction error in standardised units and its mean
(the score); post adds the score's percentile among the training errors. The per-feature
errors are the attributions: they sum to the score, so they explain it exactly.

:class:`AnomalyScorer` is the model in the enrichment pipeline (``models.scorer``); its wire
assessment is ``AnomalyAssessment(error=..., percentile=...)``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from models._nn import TorchModel, TorchScorer, export_onnx, fit_standardizer
from models.features import N_FEATURES
from models.fraud import Attributions, top_k
from models.registry import ModelVersion
from models.scorer import Degraded, Result, Scored, ScoringBatch, TopFeatures

logger = logging.getLogger(__name__)
NAME = "anomaly"


class AutoEncoderNet(nn.Module):
    def __init__(self, n_features: int = N_FEATURES, hidden: int = 32, code: int = 8) -> None:
        super().__init__()
        self.hidden, self.code = hidden, code
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.encoder = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, code), nn.ReLU()
        )
        self.decoder = nn.Sequential(
            nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, n_features)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # clamp far out, only so that absurd inputs stay finite; they still score huge
        z = torch.clamp((x - self.mean) / self.std, -1000.0, 1000.0)
        per_feature = (self.decoder(self.encoder(z)) - z) ** 2
        return per_feature.mean(dim=-1), per_feature


class AnomalyModel(TorchModel):
    name = NAME

    def __init__(
        self,
        net: AutoEncoderNet,
        training_errors: np.ndarray,
        *,
        version: int = 0,
        onnx_path: Path | None = None,
        prefer_onnx: bool = True,
    ) -> None:
        super().__init__(net, version=version, onnx_path=onnx_path, prefer_onnx=prefer_onnx)
        self.net: AutoEncoderNet = net
        self.training_errors = np.sort(np.asarray(training_errors, dtype=np.float64))

    def core(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, per_feature = self.runner(x)
        return score, per_feature

    def post(self, score: np.ndarray) -> np.ndarray:
        """Percentile (0-100) of each score among the training errors."""
        rank = np.searchsorted(self.training_errors, score, side="right")
        return 100.0 * rank / max(len(self.training_errors), 1)

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, _ = self.core(self.pre(features))
        return score, self.post(score)

    def explain(self, per_feature: np.ndarray, k: int = 3) -> Attributions:
        return top_k(per_feature, k)

    def warm_up(self) -> None:
        self.predict(np.zeros((8, N_FEATURES), dtype=np.float32))

    def save(self, folder: Path) -> dict[str, Any]:
        torch.save(self.net.state_dict(), folder / f"{NAME}.pt")
        export_onnx(self.net, N_FEATURES, folder / f"{NAME}.onnx", ["score", "per_feature"])
        np.save(folder / "training_errors.npy", self.training_errors)
        return {"hidden": self.net.hidden, "code": self.net.code}

    @classmethod
    def load(cls, mv: ModelVersion, *, prefer_onnx: bool = True) -> AnomalyModel:
        params = mv.metadata.params
        net = AutoEncoderNet(hidden=params["hidden"], code=params["code"])
        net.load_state_dict(torch.load(mv.path / f"{NAME}.pt", weights_only=True))
        return cls(
            net,
            np.load(mv.path / "training_errors.npy"),
            version=mv.version,
            onnx_path=mv.path / f"{NAME}.onnx",
            prefer_onnx=prefer_onnx,
        )

    @classmethod
    def dummy(cls) -> AnomalyModel:
        torch.manual_seed(0)
        return cls(AutoEncoderNet(hidden=8, code=2), np.linspace(0.0, 10.0, 101), prefer_onnx=False)


class AnomalyScorer(TorchScorer[AnomalyModel, tuple[np.ndarray, np.ndarray]]):
    """Anomaly in the pipeline: raw is (score, per-feature errors); the per-feature errors are
    the attributions."""

    name = NAME

    @classmethod
    def load(cls, artifact: ModelVersion, *, prefer_onnx: bool = True) -> AnomalyScorer:
        return cls(AnomalyModel.load(artifact, prefer_onnx=prefer_onnx))

    def core(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model.core(inputs)

    def explain(
        self, inputs: np.ndarray, raw: tuple[np.ndarray, np.ndarray], k: int
    ) -> list[TopFeatures]:
        attributions = self.model.explain(raw[1], k)
        return [attributions.row(i) for i in range(len(inputs))]

    def post(self, raw: tuple[np.ndarray, np.ndarray], batch: ScoringBatch) -> list[Result]:
        score = raw[0]
        return [
            Scored({"error": e, "percentile": p}) if math.isfinite(e) else Degraded(f"error {e}")
            for e, p in zip(score.tolist(), self.model.post(score).tolist(), strict=True)
        ]


def train_anomaly(
    x_normal: np.ndarray, *, seed: int = 0, epochs: int = 25, progress: bool = True
) -> tuple[AnomalyModel, dict[str, float]]:
    """Fit on rows believed normal; the percentile reference is their own errors."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = AutoEncoderNet()
    mean, std = fit_standardizer(x_normal)
    net.mean.copy_(torch.from_numpy(mean))
    net.std.copy_(torch.from_numpy(std))
    x = torch.from_numpy(x_normal)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-5)
    bar = tqdm(range(epochs), desc="anomaly", disable=not progress)
    loss = torch.tensor(0.0)
    for _ in bar:
        net.train()
        for idx in torch.split(torch.randperm(len(x), generator=gen), 512):
            opt.zero_grad()
            loss = net(x[idx])[0].mean()
            loss.backward()
            opt.step()
        bar.set_postfix(loss=round(loss.item(), 4))
    net.eval()
    with torch.inference_mode():
        errors = net(x)[0].numpy()
    return AnomalyModel(net, errors, prefer_onnx=False), {"train_error_mean": float(errors.mean())}


__all__ = ["AnomalyModel", "AnomalyScorer", "AutoEncoderNet", "train_anomaly"]
