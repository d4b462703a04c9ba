"""The command line: JSON output, and one clear line with exit code 2 for every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from daemon.cli import main
from daemon.model.samples import render_email
from training.retrain import Example, RetrainResult, Scores

REPO = Path(__file__).resolve().parent.parent


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result: Result, code: int, fragment: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cleaninbox: error: ")
    assert fragment in lines[0], lines[0]


def test_classify_texts_prints_one_json_object_a_line(tiny_bundle: Path) -> None:
    result = run("classify", "--model", str(tiny_bundle), "I lost my card", "fee for a transfer")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        obj = json.loads(line)
        assert set(obj) == {
            "intent",
            "confidence",
            "abstain",
            "abstain_reason",
            "top_k",
            "out_of_scope",
        }
        assert obj["abstain_reason"] in (None, "low_confidence", "out_of_scope")
        assert isinstance(obj["abstain"], bool)
        assert len(obj["top_k"]) == 5
        assert obj["top_k"][0][0] == obj["intent"]


def test_classify_reads_txt_jsonl_and_eml(tiny_bundle: Path, tmp_path: Path) -> None:
    import random

    txt = tmp_path / "in.txt"
    txt.write_text("first query\n\nsecond query\n")
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n')
    eml = tmp_path / "in.eml"
    eml.write_bytes(render_email("my card has not arrived", random.Random(0)))
    counts = {}
    for path in (txt, jsonl, eml):
        result = run("classify", "--model", str(tiny_bundle), "--input", str(path))
        assert result.exit_code == 0, result.stderr
        counts[path.suffix] = len(result.stdout.strip().splitlines())
    assert counts == {".txt": 2, ".jsonl": 3, ".eml": 1}


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("bad.jsonl", '{"text": "a"}\n{"txt": "b"}\n', "bad.jsonl:2: expected an object"),
        ("bad2.jsonl", "{nope\n", "bad2.jsonl:1: invalid JSON"),
        ("input.csv", "a,b\n", "unsupported input type '.csv'"),
        ("empty.eml", "", "no text to classify"),
    ],
)
def test_classify_bad_input_files(
    tiny_bundle: Path, tmp_path: Path, name: str, content: str, fragment: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    assert_one_line_error(
        run("classify", "--model", str(tiny_bundle), "--input", str(path)), 2, fragment
    )


def test_classify_missing_input_file(tiny_bundle: Path, tmp_path: Path) -> None:
    assert_one_line_error(
        run("classify", "--model", str(tiny_bundle), "--input", str(tmp_path / "x.txt")),
        2,
        "no such file",
    )


def test_corrupt_bundle_is_one_line_exit_2(bundle_copy: Path) -> None:
    (bundle_copy / "model.onnx").write_bytes(b"not a model")
    assert_one_line_error(
        run("classify", "--model", str(bundle_copy), "hi"), 2, "model.onnx has sha256"
    )


def test_missing_bundle_is_one_line_exit_2(tmp_path: Path) -> None:
    assert_one_line_error(
        run("classify", "--model", str(tmp_path / "none"), "hi"), 2, "does not exist"
    )


@pytest.mark.parametrize("source", ["none", "file"])
def test_publish_from_a_missing_source_is_one_line_exit_2(tmp_path: Path, source: str) -> None:
    (tmp_path / "file").write_text("not a directory")
    result = run("models", "publish", str(tmp_path / source), str(tmp_path / "out"))
    assert_one_line_error(result, 2, f"{tmp_path / source}: not a directory")
    assert not (tmp_path / "out").exists()


def test_train_missing_data_dir(tmp_path: Path) -> None:
    result = run(
        "train",
        "--config",
        str(REPO / "configs/train-tiny.yaml"),
        "--set",
        f"data.dir={tmp_path / 'missing'}",
        "--output",
        str(tmp_path),
    )
    assert_one_line_error(result, 2, f"banking77 directory {tmp_path / 'missing'} does not exist")


def test_train_wrong_columns(tmp_path: Path, banking77_dir: Path) -> None:
    data = tmp_path / "b77"
    shutil.copytree(banking77_dir, data)
    (data / "train.csv").write_text("sentence,label\nhi,card_arrival\n")
    result = run(
        "train",
        "--config",
        str(REPO / "configs/train-tiny.yaml"),
        "--set",
        f"data.dir={data}",
        "--output",
        str(tmp_path),
    )
    assert_one_line_error(result, 2, "train.csv: missing column(s) text, category")


def test_train_unknown_base_model_path(tmp_path: Path, banking77_dir: Path) -> None:
    result = run(
        "train",
        "--config",
        str(REPO / "configs/train-tiny.yaml"),
        "--set",
        f"data.dir={banking77_dir}",
        "--set",
        "model.init=pretrained",
        "--set",
        f"model.base_model={tmp_path / 'no-such-model'}",
        "--output",
        str(tmp_path),
    )
    assert_one_line_error(result, 2, "no such local directory")


def test_train_bad_config_values(tmp_path: Path) -> None:
    result = run(
        "train", "--config", str(REPO / "configs/train-tiny.yaml"), "--set", "train.epochs=-1"
    )
    assert_one_line_error(result, 2, "train.epochs")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 1\n  learning_rate: 3\n")
    assert_one_line_error(run("train", "--config", str(bad)), 2, "learning_rate")
    assert_one_line_error(
        run("train", "--config", str(tmp_path / "none.yaml")), 2, "does not exist"
    )


def test_models_list_promote_rollback(tiny_bundle: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    first = models / tiny_bundle.name
    second = models / (tiny_bundle.name + "-b")
    shutil.copytree(tiny_bundle, first)
    shutil.copytree(tiny_bundle, second)
    assert "no bundles" not in run("models", "list", "--models-dir", str(models)).stdout
    assert not (models / "current").exists()  # nothing is served until promoted

    assert run("models", "promote", first.name, "--models-dir", str(models)).exit_code == 0
    assert (models / "current").resolve() == first.resolve()
    assert run("models", "promote", second.name, "--models-dir", str(models)).exit_code == 0
    assert (models / "current").resolve() == second.resolve()
    listing = run("models", "list", "--models-dir", str(models), "--json").stdout
    rows = [json.loads(line) for line in listing.splitlines()]
    assert [r["current"] for r in rows] == [False, True]
    assert rows[0]["metrics"]["test_accuracy"] > 0

    assert run("models", "rollback", "--models-dir", str(models)).exit_code == 0
    assert (models / "current").resolve() == first.resolve()

    assert_one_line_error(
        run("models", "promote", "nope", "--models-dir", str(models)), 2, "no bundle 'nope'"
    )
    (second / "model.onnx").write_bytes(b"corrupt")
    assert_one_line_error(
        run("models", "promote", second.name, "--models-dir", str(models)),
        2,
        "model.onnx has sha256",
    )
    assert (models / "current").resolve() == first.resolve()  # a bad bundle is never served


def retrain_args(tmp_path: Path, corrections: Path, *extra: str) -> list[str]:
    config = str(REPO / "configs/train-tiny.yaml")
    models = str(tmp_path / "models")
    return [
        "retrain",
        "--config",
        config,
        "--corrections",
        str(corrections),
        "--models-dir",
        models,
        *extra,
    ]


@pytest.mark.parametrize("outcome", ["promoted", "kept"])
def test_retrain_prints_its_outcome_as_text_or_one_json_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    decided = RetrainResult(
        "promoted" if outcome == "promoted" else "kept",
        f"{outcome}: the reason",
        champion="champion-v",
        challenger="challenger-v",
        champion_scores=Scores(0.91, 0.5),
        challenger_scores=Scores(0.9, 0.8),
        corrections_train=30,
        corrections_holdout=10,
        report=tmp_path / "report.json",
    )
    seen: list[object] = []

    def fake_retrain(
        config: object, examples: list[Example], models_dir: Path, **_kwargs: object
    ) -> RetrainResult:
        seen.append((examples, models_dir))
        return decided

    monkeypatch.setattr("training.retrain.retrain", fake_retrain)
    corrections = tmp_path / "corrections.csv"
    corrections.write_text("text,category,account\nwhere is my card,card_arrival,work\n")

    text = run(*retrain_args(tmp_path, corrections))
    assert text.exit_code == 0, text.stderr
    assert text.stdout == f"{outcome}: {outcome}: the reason\nreport: {tmp_path / 'report.json'}\n"
    assert seen[0] == ([Example("where is my card", "card_arrival")], tmp_path / "models")

    as_json = run(*retrain_args(tmp_path, corrections, "--json"))
    assert as_json.exit_code == 0, as_json.stderr
    (line,) = as_json.stdout.splitlines()
    assert json.loads(line) == {
        "outcome": outcome,
        "reason": f"{outcome}: the reason",
        "champion": "champion-v",
        "challenger": "challenger-v",
        "champion_scores": {"banking77_accuracy": 0.91, "holdout_accuracy": 0.5},
        "challenger_scores": {"banking77_accuracy": 0.9, "holdout_accuracy": 0.8},
        "corrections_train": 30,
        "corrections_holdout": 10,
        "report": str(tmp_path / "report.json"),
    }
    assert RetrainResult.from_json(line) == decided


def test_retrain_json_reports_a_failure_as_one_object_too(tmp_path: Path) -> None:
    result = run(*retrain_args(tmp_path, tmp_path / "missing.csv", "--json"))
    assert_one_line_error(result, 2, "cannot read corrections")
    (line,) = result.stdout.splitlines()
    failed = RetrainResult.from_json(line)
    assert failed.outcome == "failed"
    assert failed.reason == result.stderr.strip().removeprefix("cleaninbox: error: ")
    assert (failed.champion, failed.challenger, failed.report) == (None, None, None)
