"""The methods evaluate and challenge compare, in a registry: a new method is one `register_method` call.

A method is fitted on one image set's images and subjects only and predicts the RDM of another set's images
(`Method.predict(train, test, target, context)`, where `context` is a `MethodContext`). Baselines use the
pretrained body's features alone; the paired tests (`paired.paired_rows`) test every other method against each
of them, and `challenge` scores them beside its own Siamese rows.

This module sits low (numpy only, no torch): the CLI's `--methods` choices and the paired tests' baselines come
from here. So a method's code is named by its module and function ('pipelines.evaluate:predict_layers', as a
package entry point names it) and imported when it first predicts; a callable may be registered as well.

- siamese: the Siamese network, trained on the training set (its epochs chosen on the training set's folds);
- layers: the stage whose RDM scores best on the training set;
- regression: non-negative weights of the stage RDMs fitted on the training set;
- frrsa: feature-reweighted RSA (Kaniuth & Hebart 2022): one non-negative weight per feature of the stages,
  ridge penalty and stages chosen by inner cross-validation over the training images (model.frrsa).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError


@dataclass
class Prediction:
    """A method's RDM of the test images, the detail its table row shows, and what it chose on the training set."""

    rdm: np.ndarray
    detail: str = ""
    chosen: dict | None = None  # kept in evaluation.json under the method's name, by direction and target
    epochs: int | None = None  # the Siamese network's: the epoch count it was trained for
    prior: np.ndarray | None = None  # the Siamese network's prior alone, for the other studies' rows


@dataclass
class MethodContext:
    """What every method may read: the training settings (a TrainConfig: backbone, weights, image size, target
    shaping), the seeds, progress, and the stage RDMs of every image set by name (computed once, up front, for the
    methods that use them)."""

    config: Any
    seeds: tuple[int, ...] = (0,)
    progress: Any = None  # io.progress.Progress
    batch_size: int = 16
    stages: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


Predict = Callable[[Any, Any, str, MethodContext], Prediction]  # (train, test: BrainDataset, target, context)


@dataclass(frozen=True)
class Method:
    """One method: its name, whether it is a baseline (the pretrained body's features only), its code (a
    callable, or 'module:function' under siamrdm, imported on first use), and what it reads that is computed
    once for all methods: the stage RDMs, or the stage features (image folds compute them for the whole set)."""

    name: str
    baseline: bool
    code: str | Predict
    description: str
    uses_stage_rdms: bool = False
    uses_stage_features: bool = False

    def predict(self, train, test, target: str, context: MethodContext) -> Prediction:
        function = self.code
        if isinstance(function, str):
            module, _, name = function.partition(":")
            function = getattr(importlib.import_module(f"siamrdm.{module}"), name)
        return function(train, test, target, context)


REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method (replacing one of the same name): evaluate, challenge, the paired tests, the report and the
    CLI's --methods all read the registry."""
    REGISTRY[method.name] = method
    return method


def method_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def baseline_names() -> tuple[str, ...]:
    """The registered baselines: what the paired tests test every other method against."""
    return tuple(name for name, method in REGISTRY.items() if method.baseline)


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise DataError(f"unknown method {name} (choose from {', '.join(REGISTRY)})")
    return REGISTRY[name]


def uses(methods: tuple[str, ...], what: str) -> bool:
    """Whether any of these methods reads the stage RDMs (`what`="stage_rdms") or the stage features."""
    return any(getattr(get_method(m), f"uses_{what}") for m in methods)


def check_methods(methods: tuple[str, ...]) -> None:
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise DataError(f"unknown method(s) {', '.join(unknown)} (choose from {', '.join(REGISTRY)})")


register_method(Method("siamese", False, "pipelines.evaluate:predict_siamese",
                       "the Siamese network trained on the training set"))
register_method(Method("layers", True, "pipelines.evaluate:predict_layers",
                       "the pretrained stage whose RDM scores best on the training set", uses_stage_rdms=True))
register_method(Method("regression", True, "pipelines.evaluate:predict_regression",
                       "non-negative weights of the stage RDMs (NNLS)", uses_stage_rdms=True))
register_method(Method("frrsa", True, "pipelines.evaluate:predict_frrsa", "feature-reweighted RSA: a non-negative "
                       "ridge weight per stage feature (Kaniuth & Hebart 2022)", uses_stage_features=True))

METHODS = method_names()  # the registered methods at import, in order: the CLI's default
