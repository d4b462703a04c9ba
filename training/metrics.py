"""Typed results of a training run: what the evaluate stage measures.

The figures used to travel as one string-keyed dict that the manifest, the model card
and the experiment tracker each re-read by key, so a renamed key failed only at the end
of a run. Here they are frozen dataclasses: mypy checks every reader, and the two JSON
shapes the bundle stores (``report/metrics.json`` and the manifest's ``metrics``) are
produced in one place each, :meth:`TrainMetrics.to_json` and
:meth:`TrainMetrics.manifest_metrics`, with the keys they always had.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # annotations only: keeps this module free of torch and onnx imports
    from training.export import ParityReport, Selection
    from training.finetune import EpochRecord
    from training.robustness import SetScores


class _AsJson:
    """``to_json()``: the dataclass's fields as a JSON-ready dict (nested ones too)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(cast(Any, self))


@dataclass(frozen=True)
class ClassScores:
    """One intent's scores on the test split."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationMetrics(_AsJson):
    """Intent-level scores of one set of logits (see ``report.classification_metrics``)."""

    examples: int
    accuracy: float
    macro_f1: float
    ece_uncalibrated: float
    ece_calibrated: float
    abstain_threshold: float
    coverage: float
    selective_accuracy: float
    per_class: dict[str, ClassScores]


@dataclass(frozen=True)
class Headline(_AsJson):
    """Accuracy and macro-F1 alone: how a reference model (PyTorch, fp32 ONNX) did."""

    accuracy: float
    macro_f1: float


@dataclass(frozen=True)
class EmailScores(_AsJson):
    """The served bundle on the test queries rendered as emails."""

    accuracy: float
    macro_f1: float
    gap_points: float  # plain test accuracy minus this, in points


@dataclass(frozen=True)
class BaselineScores(_AsJson):
    """TF-IDF + logistic regression on the same splits."""

    val_accuracy: float
    test_accuracy: float
    test_macro_f1: float
    seconds: float


@dataclass(frozen=True)
class Examples(_AsJson):
    train: int
    val: int
    test: int


@dataclass(frozen=True)
class Quantisation(_AsJson):
    """Which MatMuls stayed fp32 and why (empty when nothing was measured)."""

    per_channel: bool
    kept_fp32: list[str]
    val_agreement_all_int8: float | None
    sensitivity_kl: dict[str, float]

    @classmethod
    def of(
        cls, selection: Selection | None, per_channel: bool, keep: Sequence[str]
    ) -> Quantisation:
        """From the export's selection, or the configured list when there was none."""
        if selection is None:
            return cls(per_channel, list(keep), None, {})
        return cls(per_channel, selection.kept, selection.agreement_all_int8, selection.sensitivity)


@dataclass(frozen=True)
class WiseFT:
    """The weight-space ensembling applied after fine-tuning (alpha None: none)."""

    alpha: float | None = None
    scores: Mapping[float, list[float]] | None = None  # accuracy per set, by alpha

    def to_json(self) -> dict[str, Any]:
        """``{}``, ``{"alpha": a}`` or ``{"alpha": a, "scores": {"a": [...]}}``."""
        if self.alpha is None:
            return {}
        out: dict[str, Any] = {"alpha": self.alpha}
        if self.scores is not None:
            out["scores"] = {str(a): s for a, s in self.scores.items()}
        return out


#: Robustness figures the manifest keeps for every set.
ROBUSTNESS_MANIFEST_KEYS = ("accuracy", "acted_right", "acted_wrong")


@dataclass(frozen=True)
class TrainMetrics:
    """Everything a training run measured; ``train_seconds`` is set once the report is
    written (``report/metrics.json`` is written before it, so it never holds it)."""

    examples: Examples
    probe_val_accuracy: float
    best_epoch: int
    val_accuracy: float
    test: ClassificationMetrics
    torch_fp32: Headline
    onnx_fp32: Headline
    parity_val: ParityReport
    parity_test: ParityReport
    int8_vs_fp32_test: ParityReport
    history: Sequence[EpochRecord]
    quantisation: Quantisation
    fit_seconds: float
    wise_ft: WiseFT
    baseline: BaselineScores | None = None
    email: EmailScores | None = None
    robustness: Mapping[str, SetScores] | None = None
    train_seconds: float | None = None

    def robustness_json(self) -> dict[str, dict[str, Any]]:
        return {k: v.to_json() for k, v in (self.robustness or {}).items()}

    def to_json(self) -> dict[str, Any]:
        """``report/metrics.json``: optional sections appear only when measured."""
        out: dict[str, Any] = {
            "examples": self.examples.to_json(),
            "probe_val_accuracy": self.probe_val_accuracy,
            "best_epoch": self.best_epoch,
            "val_accuracy": self.val_accuracy,
            "test": self.test.to_json(),
            "torch_fp32": self.torch_fp32.to_json(),
            "onnx_fp32": self.onnx_fp32.to_json(),
            "parity_val": self.parity_val.to_json(),
            "parity_test": self.parity_test.to_json(),
            "int8_vs_fp32_test": self.int8_vs_fp32_test.to_json(),
            "history": [vars(r) for r in self.history],
            "quantisation": self.quantisation.to_json(),
            "fit_seconds": self.fit_seconds,
            "wise_ft": self.wise_ft.to_json(),
        }
        if self.baseline is not None:
            out["baseline"] = self.baseline.to_json()
        if self.email is not None:
            out["email"] = self.email.to_json()
        if self.robustness is not None:
            out["robustness"] = self.robustness_json()
        if self.train_seconds is not None:
            out["train_seconds"] = self.train_seconds
        return out

    def manifest_metrics(self) -> dict[str, Any]:
        """The manifest keeps headline figures and per-class F1; report/metrics.json has
        the rest. Key names and order are part of the bundle format."""
        test = self.test
        out: dict[str, Any] = {
            "test_accuracy": test.accuracy,
            "test_macro_f1": test.macro_f1,
            "test_coverage": test.coverage,
            "test_selective_accuracy": test.selective_accuracy,
            "val_accuracy": self.val_accuracy,
            "per_class_f1": {name: row.f1 for name, row in test.per_class.items()},
            "torch_fp32_test_accuracy": self.torch_fp32.accuracy,
            "onnx_fp32_test_accuracy": self.onnx_fp32.accuracy,
            "int8_vs_fp32_agreement": self.int8_vs_fp32_test.agreement,
            "int8_vs_fp32_accuracy_drop": self.int8_vs_fp32_test.accuracy_drop,
            "int8_vs_torch_agreement": self.parity_test.agreement,
            "train_seconds": self.train_seconds,
        }
        if self.baseline is not None:
            out["baseline_test_accuracy"] = self.baseline.test_accuracy
            out["baseline_test_macro_f1"] = self.baseline.test_macro_f1
        if self.email is not None:
            out["email_test_accuracy"] = self.email.accuracy
        for name, scores in (self.robustness or {}).items():
            for key in ROBUSTNESS_MANIFEST_KEYS:
                out[f"{name}_{key}"] = getattr(scores, key)
        return out
