"""Classifier throughput, latency and accuracy on the 3,080 banking77 test texts.

PyTorch fp32 (transformers, eager, batch 32 in arrival order: the way a first script would
call it) vs onnxruntime fp32 vs onnxruntime int8 (the bundle, through the daemon's own
Classifier, which sorts each call's texts by length), at 1 and 2 intra-op threads, in one
run so the ratios are comparable. Needs the [train] extra and the PyTorch weights the bundle
came from (``models/.checkpoints/<version>.pt``, written by ``train.save_checkpoint``).

    python benchmarks/classifier_speed.py --bundle models/current
    python benchmarks/classifier_speed.py --bundle NEW --compare OLD   # both in one run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from daemon.model.bundle import load_manifest
from daemon.model.classifier import Classifier
from training.config import DataConfig, ModelConfig
from training.data import load_banking77
from training.export import export_onnx, optimise
from training.model import IntentClassifier, load_base_model
from training.stages.bundle import write_bundle


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def latencies(predict_one: Callable[[str], object], texts: Sequence[str]) -> list[float]:
    out = []
    for text in texts:
        started = time.perf_counter()
        predict_one(text)
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/current"))
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("BANKING77_DIR", "data/banking77"))
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--latency-texts", type=int, default=1000, help="texts timed one by one for batch-1 latency"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="*",
        default=[],
        help="other bundles timed the same way in the same run (e.g. the previous model)",
    )
    args = parser.parse_args()

    bundle = args.bundle.resolve()
    manifest = load_manifest(bundle)
    checkpoint = args.checkpoint or bundle.parent / ".checkpoints" / f"{manifest.version}.pt"
    if not checkpoint.is_file():
        raise SystemExit(
            f"no PyTorch checkpoint at {checkpoint}; train with "
            "--set train.save_checkpoint=true or pass --checkpoint"
        )
    data = load_banking77(DataConfig(dir=args.data_dir), seed=0)
    texts, labels = data.test.texts, np.asarray(data.test.labels)
    model_config = ModelConfig(**manifest.training_config["model"])
    base = load_base_model(model_config)
    model = IntentClassifier(base.encoder, manifest.num_outputs, model_config.pooling)
    intents = len(manifest.labels)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu")["state_dict"])
    model.eval()
    from transformers import AutoTokenizer

    from training.model import resolve_base_model

    hf_tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(model_config.base_model))

    work = Path(tempfile.mkdtemp(prefix="cleaninbox-bench-"))
    export_onnx(model, work / "raw.onnx", 17)
    optimise(work / "raw.onnx", work / "fp32.onnx")
    fp32_bundle = work / "fp32"
    write_bundle(fp32_bundle, work / "fp32.onnx", (bundle / "tokenizer.json").read_text(), manifest)

    @torch.no_grad()
    def torch_logits(batch: Sequence[str]) -> np.ndarray:
        enc = hf_tokenizer(
            list(batch),
            padding=True,
            truncation=True,
            max_length=model_config.max_length,
            return_tensors="pt",
        )
        return model(enc["input_ids"], enc["attention_mask"]).numpy()

    rows = []
    timed = texts[: args.latency_texts]
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch_logits(texts[:64])  # warm-up
        started = time.perf_counter()
        out = np.concatenate([torch_logits(texts[i : i + 32]) for i in range(0, len(texts), 32)])
        seconds = time.perf_counter() - started
        lat = latencies(lambda t: torch_logits([t]), timed)
        rows.append(
            {
                "engine": "PyTorch fp32 eager",
                "threads": threads,
                "batch32_texts_per_s": len(texts) / seconds,
                "batch1_p50_ms": percentile(lat, 50) * 1e3,
                "batch1_p99_ms": percentile(lat, 99) * 1e3,
                "accuracy": float((out[:, :intents].argmax(1) == labels).mean()),
            }
        )
        engines = [("onnxruntime fp32", fp32_bundle), ("onnxruntime int8 (bundle)", bundle)]
        engines += [(f"int8 {load_manifest(b).version}", b.resolve()) for b in args.compare]
        for name, path in engines:
            batched = Classifier(path, threads=threads, batch_size=32)
            single = Classifier(path, threads=threads, batch_size=1)
            batched.logits(texts[:64])
            started = time.perf_counter()
            out = batched.logits(texts)
            seconds = time.perf_counter() - started
            lat = latencies(lambda t, c=single: c.predict([t]), timed)
            rows.append(
                {
                    "engine": name,
                    "threads": threads,
                    "batch32_texts_per_s": len(texts) / seconds,
                    "batch1_p50_ms": percentile(lat, 50) * 1e3,
                    "batch1_p99_ms": percentile(lat, 99) * 1e3,
                    "accuracy": float((out[:, :intents].argmax(1) == labels).mean()),
                }
            )
            if name.startswith("onnxruntime int8"):
                one_by_one = single.logits(texts)
                rows[-1]["batch1_vs_batch32_agreement"] = float(
                    (one_by_one.argmax(1) == out.argmax(1)).mean()
                )
    shutil.rmtree(work, ignore_errors=True)

    print(
        f"bundle {manifest.version}, {len(texts)} test texts, "
        f"{os.cpu_count()} CPUs, batch-1 latency over {len(timed)} texts"
    )
    print(
        f"{'engine':<28} {'threads':>7} {'batch32 texts/s':>16} {'b1 p50 ms':>10} "
        f"{'b1 p99 ms':>10} {'accuracy':>9}"
    )
    for r in rows:
        print(
            f"{r['engine']:<28} {r['threads']:>7} {r['batch32_texts_per_s']:>16.0f} "
            f"{r['batch1_p50_ms']:>10.2f} {r['batch1_p99_ms']:>10.2f} "
            f"{r['accuracy'] * 100:>8.2f}%"
        )
    for threads in args.threads:
        by = {r["engine"]: r for r in rows if r["threads"] == threads}
        ratio = (
            by["onnxruntime int8 (bundle)"]["batch32_texts_per_s"]
            / by["PyTorch fp32 eager"]["batch32_texts_per_s"]
        )
        agree = by["onnxruntime int8 (bundle)"].get("batch1_vs_batch32_agreement", 0.0)
        print(
            f"{threads} thread(s): int8 / PyTorch eager at batch 32 = {ratio:.1f}x; "
            f"int8 batch-1 vs batch-32 top-1 agreement {agree:.4f}"
        )
        for other in args.compare:
            name = f"int8 {load_manifest(other).version}"
            share = (
                by["onnxruntime int8 (bundle)"]["batch32_texts_per_s"]
                / by[name]["batch32_texts_per_s"]
            )
            print(f"{threads} thread(s): bundle / {name} at batch 32 = {share:.2f}")
    best = max(
        (r for r in rows if r["engine"].startswith("onnxruntime int8")),
        key=lambda r: r["batch32_texts_per_s"],
    )
    print(f"fastest int8 setting: {best['threads']} thread(s)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
