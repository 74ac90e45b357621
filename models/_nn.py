"""Shared pieces of the torch models: ONNX export, the ONNX-or-torch runner, calibration, and
the scorer base that puts a torch model in the enrichment pipeline."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from models.features import FEATURE_SCHEMA_VERSION, N_FEATURES
from models.scorer import Scorer, ScoringBatch

logger = logging.getLogger(__name__)

INPUT_NAME = "features"


def export_onnx(
    module: torch.nn.Module, n_features: int, path: Path, output_names: list[str]
) -> None:
    """Export with a dynamic batch axis.

    The TorchScript exporter is tried first: for a small MLP it is ~40x faster than the
    torch.export-based one and its output is the same graph; it is deprecated, so its
    DeprecationWarning is silenced here and the dynamo exporter is the fallback.
    """
    module.eval()
    dummy = torch.zeros(2, n_features)

    def export(**exporter: Any) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (dummy,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=output_names,
                **exporter,
            )

    try:
        export(
            opset_version=17,
            dynamo=False,
            dynamic_axes={
                INPUT_NAME: {0: "batch"},
                **{name: {0: "batch"} for name in output_names},
            },
        )
    except Exception:
        logger.info("TorchScript ONNX export failed; using the dynamo exporter", exc_info=True)
        export(dynamo=True, dynamic_shapes={"x": {0: torch.export.Dim("batch")}})


class Runner:
    """Runs one exported model: onnxruntime when the .onnx loads, else eager torch.

    ``backend`` says which one is live; it is part of a score's lineage.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        onnx_path: Path | None,
        *,
        prefer_onnx: bool = True,
        threads: int = 1,
    ) -> None:
        self.module = module.eval()
        self._session = None
        self.backend = "torch"
        if prefer_onnx and onnx_path is not None and onnx_path.exists():
            try:
                import onnxruntime as ort

                options = ort.SessionOptions()
                # one thread: the worker runs several models and an event loop on 2 cores
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                self._session = ort.InferenceSession(
                    str(onnx_path), options, providers=["CPUExecutionProvider"]
                )
                self.backend = "onnx"
            except Exception:
                logger.warning(
                    "could not load %s; serving with eager torch", onnx_path, exc_info=True
                )

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._session is not None:
            return [np.asarray(out) for out in self._session.run(None, {INPUT_NAME: x})]
        return self.torch(x)

    def torch(self, x: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        outs = out if isinstance(out, tuple) else (out,)
        return [o.numpy() for o in outs]


def fit_standardizer(x: np.ndarray, floor: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per column; the std floor keeps constant training columns finite."""
    mean = x.mean(axis=0)
    std = np.maximum(x.std(axis=0), floor)
    return mean.astype(np.float32), std.astype(np.float32)


def fit_platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling p = sigmoid(a * logit + b): a lightly regularised 1-D logistic fit."""
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=100.0, max_iter=1000)
    fit.fit(logits.reshape(-1, 1).astype(np.float64), y.astype(int))
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-mass bins (fraud is rare, so equal-width bins would be nearly empty)."""
    order = np.argsort(p)
    err = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            err += len(chunk) * abs(float(p[chunk].mean()) - float(y[chunk].mean()))
    return err / max(len(p), 1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -60, 60))), dtype=np.float64)


def model_input(features: np.ndarray) -> np.ndarray:
    """The ``pre`` step both torch models share: float32 ``[n, N_FEATURES]``, no NaN or inf."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != N_FEATURES:
        raise ValueError(f"expected [n, {N_FEATURES}] features, got {x.shape}")
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


class TorchModel:
    """What the fraud and anomaly models share: a torch net in eval mode, its version, the
    ONNX-or-torch runner, and the ``pre`` step. Array in, arrays out; :class:`TorchScorer`
    puts one in the enrichment pipeline."""

    name: str

    def __init__(
        self,
        net: torch.nn.Module,
        *,
        version: int = 0,
        onnx_path: Path | None = None,
        prefer_onnx: bool = True,
    ) -> None:
        self.net = net.eval()
        self.version = version
        self.runner = Runner(self.net, onnx_path, prefer_onnx=prefer_onnx)

    @property
    def backend(self) -> str:
        return self.runner.backend

    def pre(self, features: np.ndarray) -> np.ndarray:
        return model_input(features)

    def warm_up(self) -> None:
        raise NotImplementedError

    def save(self, folder: Path) -> dict[str, Any]:
        raise NotImplementedError


ModelT = TypeVar("ModelT", bound=TorchModel)
RawT = TypeVar("RawT")


class TorchScorer(Scorer[np.ndarray, RawT], Generic[ModelT, RawT]):
    """A :class:`TorchModel` as a pipeline scorer: identity, ``pre``, warm-up and persistence
    come from the model; subclasses add ``load``, ``core``, ``explain`` and ``post``."""

    def __init__(self, model: ModelT) -> None:
        self.model = model

    @property
    def version(self) -> int:
        return self.model.version

    @property
    def backend(self) -> str:
        return self.model.backend

    @property
    def feature_schema_version(self) -> int:
        return FEATURE_SCHEMA_VERSION

    def pre(self, batch: ScoringBatch) -> np.ndarray:
        return self.model.pre(batch.features)

    def warm_up(self) -> None:
        self.model.warm_up()

    def save(self, target: Path) -> dict[str, Any]:
        return self.model.save(target)
