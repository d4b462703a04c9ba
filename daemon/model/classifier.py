"""Run-time classifier: a model bundle served with onnxruntime and ``tokenizers``.

No torch and no transformers here: what the exporter's parity check runs is exactly
what the daemon serves.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from daemon.errors import BundleError, ModelError
from daemon.model.bundle import (
    EMBEDDING_OUTPUT,
    MODEL_NAME,
    TOKENIZER_NAME,
    Manifest,
    load_manifest,
)
from daemon.model.memory import Recall

FloatArray = npt.NDArray[np.float32]

#: Why the model left a message alone: its best intent is not confident enough, or the
#: bundle's out-of-scope detector says the message is none of its intents.
AbstainReason = Literal["low_confidence", "out_of_scope"]
ABSTAIN_REASONS: tuple[AbstainReason, ...] = ("low_confidence", "out_of_scope")


@dataclass(frozen=True)
class Prediction:
    """One text's classification, as printed by ``cleaninbox classify`` and the HTTP API.

    ``confidence`` is the calibrated probability of ``intent``; ``out_of_scope`` the
    probability of "none of these" (None for bundles without an out-of-scope class).
    """

    intent: str
    confidence: float
    abstain: bool
    top_k: list[tuple[str, float]] = field(default_factory=list)
    abstain_reason: AbstainReason | None = None
    out_of_scope: float | None = None
    #: Set when a remembered correction decided instead of the model (``intent`` is then
    #: the user's, ``confidence`` the similarity, ``top_k`` still the model's view).
    memory: Recall | None = None

    def following(self, recall: Recall) -> Prediction:
        """This message decided by a remembered correction."""
        return replace(
            self,
            intent=recall.intent,
            confidence=recall.similarity,
            abstain=False,
            abstain_reason=None,
            memory=recall,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "intent": self.intent,
            "confidence": round(self.confidence, 6),
            "abstain": self.abstain,
            "abstain_reason": self.abstain_reason,
            "top_k": [[name, round(p, 6)] for name, p in self.top_k],
        }
        if self.out_of_scope is not None:
            out["out_of_scope"] = round(self.out_of_scope, 6)
        if self.memory is not None:
            out["memory"] = self.memory.to_json()
        return out

    def describe_abstention(self) -> str:
        """One line for logs and ``history``: why the message was left alone."""
        if self.abstain_reason == "out_of_scope":
            return f"out of scope (none-of-these {self.out_of_scope or 0.0:.2f})"
        return f"low confidence ({self.intent} {self.confidence:.2f})"


def softmax(logits: FloatArray, temperature: float = 1.0) -> FloatArray:
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    out: FloatArray = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


@dataclass(frozen=True)
class Classified:
    """One batch's predictions, in input order, and the seconds inference took; with the
    sentence embeddings (one row per text) when the bundle's graph has them."""

    predictions: list[Prediction]
    seconds: float
    embeddings: FloatArray | None = None


@dataclass(frozen=True)
class Outputs:
    """The graph's outputs for a list of texts, in input order: raw logits, and the
    L2-normalised sentence embeddings when the bundle has them."""

    logits: FloatArray
    embeddings: FloatArray | None


class Classifier:
    """Loads a verified bundle and classifies texts in length-sorted batches.

    ``predict`` returns results in input order. Texts are grouped by token length so
    that little padding is computed; ``batch_size=1`` makes every result independent
    of its neighbours (dynamic int8 quantisation computes activation ranges per batch).
    """

    def __init__(
        self,
        bundle_dir: Path,
        *,
        threads: int | None = None,
        batch_size: int = 32,
        top_k: int = 5,
        abstain_threshold: float | None = None,
        out_of_scope_threshold: float | None = None,
        verify: bool = True,
        spin_wait: bool = False,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = load_manifest(self.bundle_dir, verify=verify)
        self.labels = list(self.manifest.labels)
        self.batch_size = max(1, batch_size)
        self.top_k = max(1, min(top_k, len(self.labels)))
        self.temperature = self.manifest.calibration.temperature
        self.threshold = (
            self.manifest.calibration.abstain_threshold
            if abstain_threshold is None
            else abstain_threshold
        )
        oos = self.manifest.out_of_scope
        self.out_of_scope_threshold: float | None = (
            None
            if oos is None
            else (oos.threshold if out_of_scope_threshold is None else out_of_scope_threshold)
        )
        self.num_outputs = self.manifest.num_outputs
        try:
            self.tokenizer = Tokenizer.from_file(str(self.bundle_dir / TOKENIZER_NAME))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise BundleError(
                f"model bundle {self.bundle_dir}: {TOKENIZER_NAME} cannot be loaded: {exc}"
            ) from exc
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.manifest.max_length)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # The daemon alternates inference with IMAP round trips: idle worker threads that
        # spin waiting for work take the CPU the rest of the cycle needs (on 2 cores the
        # end-to-end rate rose from ~390 to ~475 messages/s with spinning off).
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if spin_wait else "0"
        )
        try:
            self.session = ort.InferenceSession(
                str(self.bundle_dir / MODEL_NAME), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(
                f"model bundle {self.bundle_dir}: {MODEL_NAME} cannot be loaded: {exc}"
            ) from exc
        graph_inputs = {i.name for i in self.session.get_inputs()}
        missing = sorted(set(self.manifest.inputs) - graph_inputs)
        if missing:
            raise BundleError(
                f"model bundle {self.bundle_dir}: {MODEL_NAME} lacks inputs {missing} "
                "named in the manifest"
            )
        self.input_names = [name for name in self.manifest.inputs if name in graph_inputs]
        outputs = self.session.get_outputs()
        self.output_name = outputs[0].name
        named = {o.name: o for o in outputs}
        #: Whether the graph returns sentence embeddings (the correction memory needs them).
        self.embedding_output: str | None = None
        self.dimensions = 0
        if EMBEDDING_OUTPUT in named:
            width = named[EMBEDDING_OUTPUT].shape[-1]
            if not isinstance(width, int):
                raise BundleError(
                    f"model bundle {self.bundle_dir}: {MODEL_NAME} output "
                    f"{EMBEDDING_OUTPUT!r} has no fixed width"
                )
            self.embedding_output, self.dimensions = EMBEDDING_OUTPUT, width
        self._fetch = [self.output_name] + (
            [self.embedding_output] if self.embedding_output else []
        )

    @property
    def version(self) -> str:
        return self.manifest.version

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]

    def _run(self, ids: list[list[int]]) -> tuple[FloatArray, FloatArray | None]:
        width = max(len(row) for row in ids)
        input_ids = np.full((len(ids), width), self.manifest.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        try:
            result = self.session.run(self._fetch, feed)
        except Exception as exc:
            raise ModelError(f"model {self.version} failed at inference: {exc}") from exc
        logits = np.asarray(result[0], dtype=np.float32)
        if logits.shape != (len(ids), self.num_outputs):
            raise ModelError(
                f"model {self.version} returned logits of shape {logits.shape}, "
                f"expected ({len(ids)}, {self.num_outputs})"
            )
        if self.embedding_output is None:
            return logits, None
        embeddings = np.asarray(result[1], dtype=np.float32)
        if embeddings.shape != (len(ids), self.dimensions):
            raise ModelError(
                f"model {self.version} returned embeddings of shape {embeddings.shape}, "
                f"expected ({len(ids)}, {self.dimensions})"
            )
        return logits, embeddings

    def outputs(self, texts: Sequence[str]) -> Outputs:
        """Raw (uncalibrated) logits, shape ``[len(texts), num_outputs]`` (the last column
        is "none of these" when the bundle has an out-of-scope class), and embeddings
        ``[len(texts), dimensions]`` when the graph has them; in input order."""
        out = np.zeros((len(texts), self.num_outputs), dtype=np.float32)
        emb = (
            np.zeros((len(texts), self.dimensions), dtype=np.float32)
            if self.embedding_output
            else None
        )
        if not texts:
            return Outputs(out, emb)
        ids = self.encode(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            logits, embeddings = self._run([ids[i] for i in chunk])
            out[chunk] = logits
            if emb is not None and embeddings is not None:
                emb[chunk] = embeddings
        return Outputs(out, emb)

    def logits(self, texts: Sequence[str]) -> FloatArray:
        """Raw (uncalibrated) logits in input order (see :meth:`outputs`)."""
        return self.outputs(texts).logits

    def embeddings(self, texts: Sequence[str]) -> FloatArray:
        """Sentence embeddings in input order; ModelError for a bundle without them."""
        found = self.outputs(texts).embeddings
        if found is None:
            raise ModelError(
                f"model {self.version} has no {EMBEDDING_OUTPUT!r} output (exported before "
                "the correction memory existed): retrain or re-export it to use the memory"
            )
        return found

    def probabilities(self, texts: Sequence[str]) -> FloatArray:
        return softmax(self.logits(texts), self.temperature)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [self.decide(row) for row in self.probabilities(texts)]

    def classify(self, texts: Sequence[str]) -> Classified:
        """:meth:`predict` with the time it took (tokenising included) and the embeddings.
        The timing travels with the result: the classifier is shared by every account and
        the HTTP thread."""
        started = time.perf_counter()
        outputs = self.outputs(texts)
        probabilities = softmax(outputs.logits, self.temperature)
        predictions = [self.decide(row) for row in probabilities]
        return Classified(predictions, time.perf_counter() - started, outputs.embeddings)

    def decide(self, row: FloatArray) -> Prediction:
        """The served decision for one row of calibrated probabilities (every output)."""
        intents = row[: len(self.labels)]
        top = np.argsort(-intents)[: self.top_k]
        best = int(top[0])
        confidence = float(intents[best])
        oos: float | None = None
        reason: AbstainReason | None = None
        if self.out_of_scope_threshold is not None:
            oos = float(row[len(self.labels)])
            if oos >= self.out_of_scope_threshold:
                reason = "out_of_scope"
        if reason is None and confidence < self.threshold:
            reason = "low_confidence"
        return Prediction(
            intent=self.labels[best],
            confidence=confidence,
            abstain=reason is not None,
            top_k=[(self.labels[int(i)], float(intents[int(i)])) for i in top],
            abstain_reason=reason,
            out_of_scope=oos,
        )
