"""Export checks: the parity gates and their typed errors, the graph's second output (the
sentence embedding the correction memory needs), bundles from before it, and evaluate on
a bundle."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from transformers import BertConfig, BertModel

from daemon.cli import main
from daemon.errors import DataError, ModelError, ParityError
from daemon.model.bundle import (
    EMBEDDING_OUTPUT,
    MODEL_NAME,
    hash_bundle_files,
    load_manifest,
    write_manifest,
)
from daemon.model.classifier import Classifier
from training.config import DataConfig, ExportConfig, load_train_config
from training.data import load_banking77
from training.export import (
    OUTPUT_NAMES,
    build_onnx,
    check_embedding_parity,
    check_parity,
    export_onnx,
    head_nodes,
    parity,
    require_outputs,
)
from training.model import IntentClassifier

TEXTS = [
    "my card has not arrived yet",
    "how do I top up with a bank transfer?",
    "Hi, I was charged twice for the same coffee yesterday. Can you refund one? Thanks",
    "what is the exchange rate",
]


def test_parity_error_says_by_how_much() -> None:
    reference = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 50]
    candidate = reference.copy()
    candidate[:3] = np.eye(4, dtype=np.float32)[[1, 2, 3]]  # 3 flips, all of them wrong
    report = parity(reference, candidate, [0, 1, 2, 3] * 50)
    assert report.agreement == pytest.approx(197 / 200)
    assert report.accuracy_drop == pytest.approx(0.015)
    with pytest.raises(ParityError) as info:
        check_parity(report, 0.995, 0.005, "served vs PyTorch")
    message = str(info.value)
    assert "top-1 agreement 98.50% is below 99.50% (short by 1.00%)" in message
    assert "accuracy drops 1.50 points" in message
    check_parity(report, 0.98, 0.02, "loose")  # within budget: no error


def test_embedding_parity_error_says_by_how_much() -> None:
    logits = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    reference = np.eye(4, dtype=np.float32)
    turned = np.cos(np.pi / 6) * reference + np.sin(np.pi / 6) * np.roll(reference, 1, axis=1)
    report = parity(logits, logits, [0, 1, 2, 0], (reference, turned))
    assert report.embedding_cosine == pytest.approx(np.cos(np.pi / 6))  # 0.8660
    assert report.agreement == 1.0  # same decisions: only the embeddings drifted
    with pytest.raises(ParityError, match=r"mean cosine 0\.8660 is below 0\.9800"):
        check_embedding_parity(report, 0.98, "served vs PyTorch")
    check_embedding_parity(report, 0.85, "loose")
    with pytest.raises(ParityError, match="no embeddings"):
        check_embedding_parity(parity(logits, logits, [0, 1, 2, 0]), 0.5, "logits only")


def test_tiny_bundle_graph_returns_unit_norm_embeddings(tiny_bundle: Path) -> None:
    """The int8 graph keeps the logits first and adds the pooled sentence embedding, with
    a dynamic batch axis; the classifier serves both and the rows have unit length."""
    graph = onnx.load(str(tiny_bundle / MODEL_NAME)).graph
    assert [o.name for o in graph.output] == ["logits", EMBEDDING_OUTPUT]
    dims = graph.output[1].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 128]
    assert graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    classifier = Classifier(tiny_bundle)
    assert (classifier.embedding_output, classifier.dimensions) == (EMBEDDING_OUTPUT, 128)
    classified = classifier.classify(TEXTS)
    assert classified.embeddings is not None
    assert classified.embeddings.shape == (len(TEXTS), 128)
    np.testing.assert_allclose(np.linalg.norm(classified.embeddings, axis=1), 1.0, atol=1e-4)
    # one message alone gets the same embedding as in a batch (per-token int8 scales)
    np.testing.assert_allclose(
        classifier.embeddings(TEXTS[2:3])[0], classified.embeddings[2], atol=1e-5
    )


def test_tiny_bundle_head_stays_fp32_and_reads_the_embedding(tiny_bundle: Path) -> None:
    """The logits come from the fp32 head applied to the ``embedding`` output itself: the
    head is found from the logits, not from the embedding (which would quantise it)."""
    _assert_fp32_head_reads_the_embedding(onnx.load(str(tiny_bundle / MODEL_NAME)).graph)


def _assert_fp32_head_reads_the_embedding(graph: onnx.GraphProto) -> None:
    """``logits`` = an fp32 Gemm/MatMul (+ bias Add) of the ``embedding`` output itself."""
    producer = {out: node for node in graph.node for out in node.output}
    node = producer["logits"]
    while node.op_type == "Add":  # the bias, where the Gemm was split
        node = producer[node.input[0]]
    assert node.op_type in ("Gemm", "MatMul"), node.op_type
    assert node.input[0] == EMBEDDING_OUTPUT


def test_tiny_bundle_records_embedding_parity(tiny_bundle: Path) -> None:
    report = json.loads((tiny_bundle / "report" / "metrics.json").read_text())
    cosine = report["parity_val"]["embedding_cosine"]
    assert load_train_config(None).export.min_embedding_cosine <= cosine <= 1.0001


@pytest.mark.parametrize("activations", ["per_token", "per_tensor"])
def test_both_quantisers_keep_the_embedding_output(activations: str, tmp_path: Path) -> None:
    """Optimisation, either int8 rewrite and the int8 embedding table keep both outputs
    and the head in fp32; the int8 embedding stays close to PyTorch's."""
    torch.manual_seed(0)
    bert = BertConfig(vocab_size=5000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = IntentClassifier(BertModel(bert), 5)
    config = ExportConfig(activations=activations)  # type: ignore[arg-type]
    built = build_onnx(model, tmp_path, tmp_path, config, log=lambda _line: None)
    assert built.quantised
    graph = onnx.load(str(built.model_path)).graph
    assert [o.name for o in graph.output] == OUTPUT_NAMES
    assert any("Integer" in n.op_type for n in graph.node)  # int8 MatMuls
    assert any(i.name.endswith("_int8") for i in graph.initializer)  # the embedding table
    assert len(head_nodes(built.fp32_path)) == 1
    _assert_fp32_head_reads_the_embedding(graph)
    ids = torch.randint(1, 5000, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    session = ort.InferenceSession(str(built.model_path), providers=["CPUExecutionProvider"])
    logits, embedding = session.run(
        None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    )
    with torch.no_grad():
        reference = model.embed(ids, mask).numpy()
    assert logits.shape == (3, 5) and embedding.shape == (3, 32)
    assert (reference * embedding).sum(axis=1).min() > 0.9


def test_a_graph_that_lost_the_embedding_is_refused(tmp_path: Path) -> None:
    bert = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    export_onnx(
        IntentClassifier(BertModel(bert), 3), tmp_path / "old.onnx", 17, with_embedding=False
    )
    with pytest.raises(ModelError, match=r"graph outputs are \['logits'\]"):
        require_outputs(tmp_path / "old.onnx", OUTPUT_NAMES, "int8 ONNX")


def _drop_embedding_output(bundle: Path) -> None:
    """Make ``bundle`` what export wrote before the correction memory: a graph with the
    logits only, a manifest without the memory section, hashes rewritten."""
    model = onnx.load(str(bundle / MODEL_NAME))
    kept = [o for o in model.graph.output if o.name != EMBEDDING_OUTPUT]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(bundle / MODEL_NAME))
    manifest = load_manifest(bundle, verify=False).model_copy(update={"memory": None})
    write_manifest(bundle, manifest.model_copy(update={"files": hash_bundle_files(bundle)}))


def test_a_bundle_without_the_embedding_output_still_classifies(
    tiny_bundle: Path, bundle_copy: Path
) -> None:
    _drop_embedding_output(bundle_copy)
    old = Classifier(bundle_copy)  # files verified against the rewritten hashes
    assert old.embedding_output is None
    classified = old.classify(TEXTS)
    assert classified.embeddings is None
    current = Classifier(tiny_bundle).classify(TEXTS)
    assert [p.intent for p in classified.predictions] == [p.intent for p in current.predictions]
    np.testing.assert_allclose(old.logits(TEXTS), Classifier(tiny_bundle).logits(TEXTS))
    with pytest.raises(ModelError, match="re-export"):
        old.embeddings(TEXTS)


def test_evaluate_prints_metrics(tiny_bundle: Path, banking77_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--model",
            str(tiny_bundle),
            "--data-dir",
            str(banking77_dir),
            "--report",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["examples"] == 3080
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["email_accuracy"] <= 1
    assert (tmp_path / "r" / "confusion_matrix.png").stat().st_size > 0


def test_hub_source_without_datasets_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Hugging Face hub cannot be reached here, so only the missing-extra path is
    # testable: the error must say what to install rather than fail inside an import.
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if [hub] were not installed
    with pytest.raises(DataError, match=r"pip install 'cleaninbox\[hub\]'"):
        load_banking77(DataConfig(dir=tmp_path / "b77", source="hub"), seed=0)
