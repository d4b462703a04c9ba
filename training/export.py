"""Export to ONNX, optimise and quantise with onnxruntime, and check parity.

The parity check runs the exported graph through the daemon's own classifier
(``daemon.classifier.Classifier``: onnxruntime + tokenizers, no torch), so what is
checked is exactly what is served.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.optimizer import optimize_model

from daemon.errors import ParityError
from training.config import ExportConfig
from training.model import IntentClassifier

FloatArray = npt.NDArray[np.float32]
INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAME = "logits"


def export_onnx(model: IntentClassifier, path: Path, opset: int) -> None:
    """fp32 ONNX with dynamic batch and sequence axes (the legacy TorchScript exporter)."""
    model.eval()
    dummy_ids = torch.ones((2, 16), dtype=torch.long)
    dummy_mask = torch.ones((2, 16), dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy_ids, dummy_mask),
            str(path),
            input_names=INPUT_NAMES,
            output_names=[OUTPUT_NAME],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def optimise(source: Path, target: Path, num_heads: int, hidden_size: int) -> None:
    """onnxruntime's transformer graph optimiser (attention, LayerNorm, GELU fusions)."""
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    optimised = optimize_model(
        str(source),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=1,
        use_gpu=False,
    )
    optimised.save_model_to_file(str(target))


def quantise(source: Path, target: Path, config: ExportConfig) -> None:
    """Dynamic int8: weights int8, activations quantised per batch at run time.

    The classifier head stays fp32 (it is tiny and sits right before the logits), and so
    does every MatMul whose name contains one of ``config.keep_fp32``.
    """
    graph = onnx.load(str(source))
    keep = [
        node.name
        for node in graph.graph.node
        if node.op_type in ("MatMul", "Gemm")
        and (
            "head" in " ".join(node.input)
            or any(pattern in node.name for pattern in config.keep_fp32)
        )
    ]
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=config.per_channel,
        nodes_to_exclude=keep,
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )


@dataclass(frozen=True)
class ExportArtifacts:
    fp32_path: Path
    model_path: Path
    quantised: bool


def build_onnx(
    model: IntentClassifier, bundle_dir: Path, work_dir: Path, config: ExportConfig
) -> ExportArtifacts:
    """Write ``bundle_dir/model.onnx`` (int8 unless disabled); keep the fp32 graph in work_dir."""
    raw = work_dir / "model.fp32.raw.onnx"
    fp32 = work_dir / "model.fp32.onnx"
    export_onnx(model, raw, config.opset)
    encoder_config = model.encoder.config
    optimise(raw, fp32, int(encoder_config.num_attention_heads), int(encoder_config.hidden_size))
    target = bundle_dir / "model.onnx"
    if config.quantize:
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "model.onnx"
            quantise(fp32, staged, config)
            staged.replace(target)
    else:
        target.write_bytes(fp32.read_bytes())
    return ExportArtifacts(fp32, target, config.quantize)


@dataclass(frozen=True)
class ParityReport:
    examples: int
    agreement: float
    reference_accuracy: float
    candidate_accuracy: float

    @property
    def accuracy_drop(self) -> float:
        return self.reference_accuracy - self.candidate_accuracy

    def to_json(self) -> dict[str, float]:
        out: dict[str, float] = asdict(self)
        out["accuracy_drop"] = self.accuracy_drop
        return out


def parity(reference: FloatArray, candidate: FloatArray, labels: list[int]) -> ParityReport:
    ref_top = reference.argmax(axis=1)
    cand_top = candidate.argmax(axis=1)
    truth = np.asarray(labels)
    return ParityReport(
        examples=len(labels),
        agreement=float((ref_top == cand_top).mean()),
        reference_accuracy=float((ref_top == truth).mean()),
        candidate_accuracy=float((cand_top == truth).mean()),
    )


def check_parity(report: ParityReport, min_agreement: float, max_drop: float, what: str) -> None:
    """Raise ParityError when ``what`` disagrees with its reference beyond the budget."""
    problems = []
    if report.agreement < min_agreement:
        problems.append(
            f"top-1 agreement {report.agreement:.2%} is below {min_agreement:.2%} "
            f"(short by {min_agreement - report.agreement:.2%})"
        )
    if report.accuracy_drop > max_drop:
        problems.append(
            f"accuracy drops {report.accuracy_drop * 100:.2f} points "
            f"({report.reference_accuracy:.2%} -> {report.candidate_accuracy:.2%}), "
            f"more than the allowed {max_drop * 100:.2f}"
        )
    if problems:
        raise ParityError(
            f"{what} parity check failed on {report.examples} examples: " + "; ".join(problems)
        )
