"""Export to ONNX, optimise and quantise with onnxruntime, and check parity.

The graph has two outputs: ``logits`` (first, what every bundle always had) and
``embedding``, the pooled L2-normalised sentence embedding the head reads, which the
daemon's correction memory compares messages by. The parity check runs the exported
graph through the daemon's own classifier (``daemon.model.classifier.Classifier``:
onnxruntime + tokenizers, no torch), so what is checked is exactly what is served.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from daemon.errors import ModelError, ParityError
from daemon.model.bundle import EMBEDDING_OUTPUT
from daemon.model.classifier import softmax
from training.config import ExportConfig
from training.model import IntentClassifier, ServedGraph

FloatArray = npt.NDArray[np.float32]
INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAME = "logits"
#: The graph's outputs, in order: the logits stay first (the daemon reads output 0).
OUTPUT_NAMES = [OUTPUT_NAME, EMBEDDING_OUTPUT]


def export_onnx(
    model: IntentClassifier, path: Path, opset: int, *, with_embedding: bool = True
) -> None:
    """fp32 ONNX with dynamic batch and sequence axes (the legacy TorchScript exporter):
    ``logits`` and, unless ``with_embedding`` is False (the graphs bundles had before the
    correction memory), ``embedding`` ``[batch, hidden]``."""
    model.eval()
    dummy_ids = torch.ones((2, 16), dtype=torch.long)
    dummy_mask = torch.ones((2, 16), dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    names = OUTPUT_NAMES if with_embedding else [OUTPUT_NAME]
    module: torch.nn.Module = ServedGraph(model) if with_embedding else model
    with torch.no_grad():
        torch.onnx.export(
            module,
            (dummy_ids, dummy_mask),
            str(path),
            input_names=INPUT_NAMES,
            output_names=names,
            dynamic_axes={
                "input_ids": axes,
                "attention_mask": axes,
                **{name: {0: "batch"} for name in names},
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def output_names(path: Path) -> list[str]:
    """The graph's output names, in order."""
    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def require_outputs(path: Path, expected: Sequence[str], what: str) -> None:
    """ModelError unless ``path``'s outputs are exactly ``expected``, in order: a graph
    rewrite that lost the embedding (or moved the logits) must not reach a bundle."""
    found = output_names(path)
    if found != list(expected):
        raise ModelError(f"{what}: graph outputs are {found}, expected {list(expected)}")


def optimise(source: Path, target: Path) -> None:
    """onnxruntime's hardware-independent graph optimisations (constant folding, redundant
    node elimination, common fusions), saved offline; the session applies the
    hardware-specific rest at load time."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def quantise_embeddings(path: Path, min_rows: int = 4096) -> int:
    """Store large embedding tables as int8 with one scale per row; returns rows converted.

    ``Gather(table, ids)`` becomes ``Cast(Gather(table_int8, ids)) * Gather(scale, ids)``:
    standard ONNX ops, a quarter of the size, and (unlike one scale for the whole table)
    every token keeps its own precision.
    """
    model = onnx.load(str(path))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    converted = 0
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or len(table.dims) != 2 or table.dims[0] < min_rows:
            new_nodes.append(node)
            continue
        weights = numpy_helper.to_array(table).astype(np.float32)
        scale = np.maximum(np.abs(weights).max(axis=1), 1e-12) / 127.0
        quantised = np.clip(np.round(weights / scale[:, None]), -127, 127).astype(np.int8)
        base = table.name
        graph.initializer.remove(table)
        graph.initializer.extend(
            [
                numpy_helper.from_array(quantised, f"{base}_int8"),
                numpy_helper.from_array(scale.astype(np.float32).reshape(-1, 1), f"{base}_scale"),
            ]
        )
        ids, out = node.input[1], node.output[0]
        new_nodes += [
            helper.make_node("Gather", [f"{base}_int8", ids], [f"{out}_q"], name=f"{node.name}_q"),
            helper.make_node(
                "Cast",
                [f"{out}_q"],
                [f"{out}_f"],
                to=onnx.TensorProto.FLOAT,
                name=f"{node.name}_cast",
            ),
            helper.make_node(
                "Gather", [f"{base}_scale", ids], [f"{out}_s"], name=f"{node.name}_scale"
            ),
            helper.make_node("Mul", [f"{out}_f", f"{out}_s"], [out], name=f"{node.name}_mul"),
        ]
        converted += int(table.dims[0])
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return converted


def weight_matmuls(path: Path) -> list[str]:
    """Names of the MatMul nodes that multiply by a weight (what dynamic int8 quantises)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in weights
    ]


def head_nodes(path: Path) -> list[str]:
    """The MatMul/Gemm that produces the logits (found by walking back from the output).

    Node and weight names do not survive graph optimisation, so the head is found by
    structure: the first MatMul/Gemm upstream of the ``logits`` output (the first output;
    walking back from ``embedding`` would reach the encoder's last MatMul instead).
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    frontier = [graph.output[0].name]
    seen: set[str] = set()
    while frontier:
        name = frontier.pop()
        node = producer.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("MatMul", "Gemm"):
            return [node.name]
        frontier.extend(node.input)
    return []


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def quantise_per_token(source: Path, target: Path, keep_fp32: Sequence[str]) -> int:
    """int8 MatMuls with one activation scale per token; returns the MatMuls rewritten.

    onnxruntime's dynamic quantisation uses one scale for a whole activation tensor, so
    the few tokens with huge activations ([CLS] reaches 8x the median row here) set the
    precision for every token, and a message's result depends on what else shares its
    batch. Here each weight ``MatMul(x, W)`` becomes, with standard ONNX ops::

        s   = max(|x|, over the last axis) / 127                      (per token)
        x8  = uint8(clip(round(x / s) + 128, 1, 255))
        y   = MatMulInteger(x8, W8, a_zero_point=128) * s * w_scale   (W8: int8 per column)

    The ``+128`` / zero-point pair keeps onnxruntime on its fast u8 x s8 kernels while
    the arithmetic stays symmetric. Tokens never share a scale, so results do not depend
    on batch neighbours or padding.
    """
    model = onnx.load(str(source))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    head = set(head_nodes(source))
    targets = set(weight_matmuls(source)) - head - set(keep_fp32)
    graph.initializer.extend(
        [
            _const("q_eps", np.array(1e-8, np.float32)),
            _const("q_inv127", np.array(1 / 127, np.float32)),
            _const("q_offset", np.array(128, np.float32)),
            _const("q_low", np.array(1, np.float32)),
            _const("q_high", np.array(255, np.float32)),
            _const("q_zero", np.array(128, np.uint8)),
        ]
    )
    quantised_inputs: dict[str, tuple[str, str]] = {}
    nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in graph.node:
        if node.name not in targets:
            nodes.append(node)
            continue
        x, weight_name = node.input
        tag = node.name.strip("/").replace("/", "_")
        w_int8, w_scale = _int8_columns(numpy_helper.to_array(inits[weight_name]))
        graph.initializer.extend([_const(f"{tag}_w8", w_int8), _const(f"{tag}_ws", w_scale)])
        if x not in quantised_inputs:  # Q, K and V share their input: quantise it once
            q = f"{x.strip('/').replace('/', '_')}_q"
            nodes += _per_token_uint8(x, q)
            quantised_inputs[x] = (f"{q}_u8", f"{q}_s")
        nodes += _int8_matmul(tag, *quantised_inputs[x], node.output[0])
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return rewritten


def _int8_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights with one scale per output column, and the scales."""
    weight = weight.astype(np.float32)
    w_scale = (np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127.0).astype(np.float32)
    w_int8 = np.clip(np.round(weight / w_scale), -127, 127).astype(np.int8)
    return w_int8, w_scale


def _per_token_uint8(x: str, q: str) -> list[onnx.NodeProto]:
    """Nodes turning activation ``x`` into ``{q}_u8`` (uint8, zero point 128) with one
    scale per token, ``{q}_s`` (see :func:`quantise_per_token`)."""
    return [
        helper.make_node("Abs", [x], [f"{q}_abs"], name=f"{q}_abs"),
        helper.make_node(
            "ReduceMax", [f"{q}_abs"], [f"{q}_amax"], axes=[-1], keepdims=1, name=f"{q}_amax"
        ),
        helper.make_node("Max", [f"{q}_amax", "q_eps"], [f"{q}_amax1"], name=f"{q}_max"),
        helper.make_node("Mul", [f"{q}_amax1", "q_inv127"], [f"{q}_s"], name=f"{q}_s"),
        helper.make_node("Div", [x, f"{q}_s"], [f"{q}_div"], name=f"{q}_div"),
        helper.make_node("Round", [f"{q}_div"], [f"{q}_rnd"], name=f"{q}_rnd"),
        helper.make_node("Add", [f"{q}_rnd", "q_offset"], [f"{q}_off"], name=f"{q}_off"),
        helper.make_node("Clip", [f"{q}_off", "q_low", "q_high"], [f"{q}_clip"], name=f"{q}_clip"),
        helper.make_node(
            "Cast", [f"{q}_clip"], [f"{q}_u8"], to=onnx.TensorProto.UINT8, name=f"{q}_u8"
        ),
    ]


def _int8_matmul(tag: str, x8: str, x_scale: str, y: str) -> list[onnx.NodeProto]:
    """``y = MatMulInteger(x8, {tag}_w8) * x_scale * {tag}_ws``: the rewritten MatMul."""
    return [
        helper.make_node(
            "MatMulInteger", [x8, f"{tag}_w8", "q_zero"], [f"{tag}_i32"], name=f"{tag}_mmi"
        ),
        helper.make_node(
            "Cast", [f"{tag}_i32"], [f"{tag}_f32"], to=onnx.TensorProto.FLOAT, name=f"{tag}_f32"
        ),
        helper.make_node("Mul", [f"{tag}_f32", x_scale], [f"{tag}_xs"], name=f"{tag}_xs"),
        helper.make_node("Mul", [f"{tag}_xs", f"{tag}_ws"], [y], name=f"{tag}_ws"),
    ]


def quantise(source: Path, target: Path, config: ExportConfig, keep_fp32: Sequence[str]) -> None:
    """int8 weights and activations (see ``export.activations``), int8 embeddings per row.

    The classifier head always stays fp32 (it is tiny and sits right before the logits);
    so does every MatMul named in ``keep_fp32``.
    """
    if config.activations == "per_token":
        quantise_per_token(source, target, keep_fp32)
    else:
        # onnxruntime's own dynamic quantisation: one activation scale per tensor. (It
        # splits a Gemm into <name>_MatMul + Add before applying exclusions.)
        head = head_nodes(source)
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=config.per_channel,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=[*head, *(f"{h}_MatMul" for h in head), *keep_fp32],
            extra_options={"MatMulConstBOnly": True},
        )
    quantise_embeddings(target)


Evaluate = Callable[[Path], FloatArray]


def agreement(reference: FloatArray, candidate: FloatArray) -> float:
    return float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean())


def mean_kl(reference: FloatArray, candidate: FloatArray) -> float:
    p = softmax(reference)
    log_p = np.log(np.clip(p, 1e-12, None))
    log_q = np.log(np.clip(softmax(candidate), 1e-12, None))
    return float((p * (log_p - log_q)).sum(axis=1).mean())


@dataclass
class Selection:
    """How the fp32-kept nodes were chosen (recorded in the bundle's report)."""

    kept: list[str] = field(default_factory=list)
    agreement_all_int8: float = 0.0
    agreement: float = 0.0
    size_mb: float = 0.0
    sensitivity: dict[str, float] = field(default_factory=dict)  # KL when kept fp32


def select_fp32_nodes(
    fp32: Path,
    work: Path,
    evaluate: Evaluate,
    config: ExportConfig,
    log: Callable[[str], None] = print,
) -> Selection:
    """Keep the MatMuls whose int8 error matters most in fp32, within the size budget.

    All-int8 first; if its top-1 agreement with the fp32 graph (on ``evaluate``'s
    held-out texts) is below ``config.auto_target_agreement``, every weight MatMul is
    scored by the divergence that remains when only it is left in fp32, and the best are
    kept in fp32 one by one until the target is met or ``config.max_size_mb`` is reached.
    """
    reference = evaluate(fp32)
    probe = work / "probe.int8.onnx"
    quantise(fp32, probe, config, config.keep_fp32)
    selection = Selection(kept=list(config.keep_fp32))
    selection.agreement_all_int8 = selection.agreement = agreement(reference, evaluate(probe))
    selection.size_mb = probe.stat().st_size / 1e6
    if not config.auto_keep_fp32 or selection.agreement >= config.auto_target_agreement:
        return selection
    candidates = [n for n in weight_matmuls(fp32) if n not in selection.kept]
    log(
        f"int8 agreement {selection.agreement:.4f} is below "
        f"{config.auto_target_agreement:.4f}: measuring the sensitivity of "
        f"{len(candidates)} MatMuls"
    )
    for node in candidates:
        quantise(fp32, probe, config, [*selection.kept, node])
        selection.sensitivity[node] = mean_kl(reference, evaluate(probe))
    for node in sorted(candidates, key=lambda n: selection.sensitivity[n]):
        trial = [*selection.kept, node]
        quantise(fp32, probe, config, trial)
        size = probe.stat().st_size / 1e6
        if size > config.max_size_mb:
            log(
                f"keeping {node} in fp32 would make the model {size:.1f} MB "
                f"(budget {config.max_size_mb:g} MB); stopping"
            )
            break
        selection.kept, selection.size_mb = trial, size
        selection.agreement = agreement(reference, evaluate(probe))
        log(f"fp32: {node} -> agreement {selection.agreement:.4f}, {size:.1f} MB")
        if selection.agreement >= config.auto_target_agreement:
            break
    return selection


@dataclass(frozen=True)
class ExportArtifacts:
    fp32_path: Path
    model_path: Path
    quantised: bool
    selection: Selection | None = None


def build_onnx(
    model: IntentClassifier,
    bundle_dir: Path,
    work_dir: Path,
    config: ExportConfig,
    evaluate: Evaluate | None = None,
    log: Callable[[str], None] = print,
) -> ExportArtifacts:
    """Write ``bundle_dir/model.onnx`` (int8 unless disabled); keep the fp32 graph in work_dir.

    With ``evaluate`` (logits of held-out texts for a graph), sensitive MatMuls are chosen
    to stay fp32 (see :func:`select_fp32_nodes`). Both graphs are checked to keep the
    ``logits`` and ``embedding`` outputs, in that order (ModelError otherwise).
    """
    raw = work_dir / "model.fp32.raw.onnx"
    fp32 = work_dir / "model.fp32.onnx"
    export_onnx(model, raw, config.opset)
    optimise(raw, fp32)
    require_outputs(fp32, OUTPUT_NAMES, "optimised fp32 ONNX")
    target = bundle_dir / "model.onnx"
    if not config.quantize:
        target.write_bytes(fp32.read_bytes())
        return ExportArtifacts(fp32, target, False, None)
    selection = None
    keep = list(config.keep_fp32)
    if evaluate is not None:
        selection = select_fp32_nodes(fp32, work_dir, evaluate, config, log)
        keep = selection.kept
    # Staged beside the target: a rename across file systems (a tmpfs /tmp, a container's
    # volume) fails with EXDEV.
    with tempfile.TemporaryDirectory(dir=bundle_dir, prefix=".quantise-") as tmp:
        staged = Path(tmp) / "model.onnx"
        quantise(fp32, staged, config, keep)
        require_outputs(staged, OUTPUT_NAMES, "int8 ONNX")
        staged.replace(target)
    return ExportArtifacts(fp32, target, True, selection)


@dataclass(frozen=True)
class ParityReport:
    examples: int
    agreement: float
    reference_accuracy: float
    candidate_accuracy: float
    #: Mean cosine between the candidate's sentence embeddings and the reference's (the
    #: correction memory's input); None where not measured.
    embedding_cosine: float | None = None

    @property
    def accuracy_drop(self) -> float:
        return self.reference_accuracy - self.candidate_accuracy

    def to_json(self) -> dict[str, float]:
        out: dict[str, float] = asdict(self)
        out["accuracy_drop"] = self.accuracy_drop
        return out


def parity(
    reference: FloatArray,
    candidate: FloatArray,
    labels: list[int],
    embeddings: tuple[FloatArray, FloatArray] | None = None,
) -> ParityReport:
    """Top-1 agreement and accuracies of ``candidate``'s logits against ``reference``'s;
    with ``embeddings`` (reference's, candidate's), their mean cosine too."""
    ref_top = reference.argmax(axis=1)
    cand_top = candidate.argmax(axis=1)
    truth = np.asarray(labels)
    return ParityReport(
        examples=len(labels),
        agreement=float((ref_top == cand_top).mean()),
        reference_accuracy=float((ref_top == truth).mean()),
        candidate_accuracy=float((cand_top == truth).mean()),
        embedding_cosine=None if embeddings is None else mean_cosine(*embeddings),
    )


def mean_cosine(reference: FloatArray, candidate: FloatArray) -> float:
    """Mean row-wise cosine similarity (rows are normalised here, not trusted to be)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"embeddings of shapes {reference.shape} and {candidate.shape}")
    if not len(reference):
        return 1.0
    ref = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    cand = candidate / np.maximum(np.linalg.norm(candidate, axis=1, keepdims=True), 1e-12)
    return float((ref * cand).sum(axis=1).mean())


def check_embedding_parity(report: ParityReport, min_cosine: float, what: str) -> None:
    """Raise ParityError when ``what``'s sentence embeddings drift from the reference's:
    the correction memory's threshold is chosen on these embeddings, and a similarity
    means nothing if quantisation moved them (int8 can keep the argmax and still do so)."""
    cosine = report.embedding_cosine
    if cosine is None:
        raise ParityError(f"{what}: no embeddings to check")
    if cosine < min_cosine:
        raise ParityError(
            f"{what} embedding parity check failed on {report.examples} examples: mean "
            f"cosine {cosine:.4f} is below {min_cosine:.4f} (short by {min_cosine - cosine:.4f})"
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
