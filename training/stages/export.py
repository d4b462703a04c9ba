"""Stage 3, export and verify: the int8 ONNX graph in the staging bundle, served by the
daemon's own classifier and checked against PyTorch before anything else is trusted:
its decisions (top-1 agreement, accuracy) and its sentence embeddings (mean cosine), which
the correction memory compares messages by."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from daemon.errors import ModelError
from daemon.model.bundle import Manifest
from daemon.model.classifier import Classifier
from training.config import TrainConfig
from training.data import Banking77
from training.export import (
    ParityReport,
    Selection,
    build_onnx,
    check_embedding_parity,
    check_parity,
    parity,
)
from training.finetune import embeddings, encode, predict_logits
from training.model import IntentClassifier, LoadedBase
from training.stages.bundle import Staging, write_bundle

FloatArray = npt.NDArray[np.float32]
Log = Callable[[str], None]


@dataclass(frozen=True)
class Exported:
    """The staging bundle's graph and the logits every later stage starts from."""

    manifest: Manifest  # the staging bundle's, files hashed
    tokenizer_json: str  # the bundle's tokenizer.json
    quantised: bool
    selection: Selection | None  # how fp32-kept MatMuls were chosen, when measured
    onnx_mb: float
    served: Classifier  # the staging bundle as the daemon loads it
    served_val: FloatArray
    served_test: FloatArray
    torch_test: FloatArray
    fp32_test: FloatArray  # the fp32 ONNX graph: what quantisation is measured against
    parity_val: ParityReport  # served vs PyTorch, embeddings included
    parity_test: ParityReport
    quant_test: ParityReport  # served (int8) vs fp32 ONNX
    served_val_embeddings: FloatArray | None = None  # what the memory is calibrated on


def _torch_logits(
    model: IntentClassifier, base: LoadedBase, texts: list[str], max_len: int
) -> FloatArray:
    return predict_logits(model, encode(base.tokenizer, texts, max_len), base.pad_token_id)


def _torch_outputs(
    model: IntentClassifier, base: LoadedBase, texts: list[str], max_len: int
) -> tuple[FloatArray, FloatArray]:
    """PyTorch's logits and sentence embeddings in one encoder pass (the head applied to
    the embedding is exactly the model's forward)."""
    found = embeddings(model, encode(base.tokenizer, texts, max_len), base.pad_token_id)
    with torch.no_grad():
        logits = model.head(torch.from_numpy(found)).float().numpy()
    return np.asarray(logits, dtype=np.float32), found


def _served_outputs(served: Classifier, texts: list[str]) -> tuple[FloatArray, FloatArray]:
    """The served graph's logits and embeddings; ModelError if it has no embeddings
    (export always writes them: a graph without them is a bug, not an old bundle)."""
    outputs = served.outputs(texts)
    if outputs.embeddings is None:
        raise ModelError("the exported graph has no embedding output")
    return outputs.logits, outputs.embeddings


def _graph_evaluator(
    work: Path, tokenizer_json: str, manifest: Manifest, texts: list[str]
) -> Callable[[Path], FloatArray]:
    """``build_onnx``'s judge of a candidate graph (which MatMuls stay fp32)."""

    def evaluate(graph: Path) -> FloatArray:
        """Logits of the validation texts for an ONNX graph, served as the daemon would."""
        probe = work / "probe-bundle"
        shutil.rmtree(probe, ignore_errors=True)
        write_bundle(probe, graph, tokenizer_json, manifest)
        return Classifier(probe, batch_size=32).logits(texts)

    return evaluate


def export_and_verify(
    config: TrainConfig,
    data: Banking77,
    base: LoadedBase,
    model: IntentClassifier,
    staging: Staging,
    log: Log = print,
) -> Exported:
    """Write ``model.onnx`` into the staging bundle; raise ParityError when the served
    graph disagrees with PyTorch on validation beyond ``export``'s budget."""
    max_len = config.model.max_length
    torch_val, torch_val_embeddings = _torch_outputs(model, base, data.val.texts, max_len)
    torch_test = _torch_logits(model, base, data.test.texts, max_len)
    # After encoding: the file records the truncation the model was evaluated with.
    tokenizer_json = base.tokenizer.to_str()
    with tempfile.TemporaryDirectory(prefix="cleaninbox-export-") as tmp:
        work = Path(tmp)
        evaluate = _graph_evaluator(work, tokenizer_json, staging.manifest, data.val.texts)
        artifacts = build_onnx(model, staging.directory, work, config.export, evaluate, log)
        manifest = write_bundle(
            staging.directory, artifacts.model_path, tokenizer_json, staging.manifest
        )
        fp32_dir = work / "fp32"
        write_bundle(fp32_dir, artifacts.fp32_path, tokenizer_json, manifest)
        served = Classifier(staging.directory, batch_size=32)
        fp32 = Classifier(fp32_dir, batch_size=32)
        served_val, served_val_embeddings = _served_outputs(served, data.val.texts)
        served_test = served.logits(data.test.texts)
        fp32_test = fp32.logits(data.test.texts)
    onnx_mb = artifacts.model_path.stat().st_size / 1e6
    log(f"exported {'int8' if artifacts.quantised else 'fp32'} ONNX: {onnx_mb:.1f} MB")
    parity_val = parity(
        torch_val, served_val, data.val.labels, (torch_val_embeddings, served_val_embeddings)
    )
    log(
        f"parity (validation): agreement {parity_val.agreement:.4f}, accuracy drop "
        f"{parity_val.accuracy_drop * 100:.2f} points, embedding cosine "
        f"{parity_val.embedding_cosine:.4f}"
    )
    what = "served ONNX vs PyTorch (validation)"
    check_parity(parity_val, config.export.min_agreement, config.export.max_accuracy_drop, what)
    check_embedding_parity(parity_val, config.export.min_embedding_cosine, what)
    return Exported(
        manifest=manifest,
        tokenizer_json=tokenizer_json,
        quantised=artifacts.quantised,
        selection=artifacts.selection,
        onnx_mb=onnx_mb,
        served=served,
        served_val=served_val,
        served_test=served_test,
        torch_test=torch_test,
        fp32_test=fp32_test,
        parity_val=parity_val,
        parity_test=parity(torch_test, served_test, data.test.labels),
        quant_test=parity(fp32_test, served_test, data.test.labels),
        served_val_embeddings=served_val_embeddings,
    )
