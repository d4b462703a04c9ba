"""Packaging, as a user meets it: a clone holds no run-time files and runs the demo from any
directory, a training log written to a file reads as lines, and the wheel that
``python -m build`` makes holds only the two packages, installs in a clean virtualenv and
refuses to share one with python-daemon (the other owner of the import name ``daemon``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import daemon
from daemon.cli import CLASH_ADVICE, import_name_clash, main
from daemon.model.registry import promote

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "train-tiny.yaml"
TRAIN = (sys.executable, "-m", "daemon.cli", "train")
PIP = (sys.executable, "-m", "pip")


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def one_line_error(result: Result, code: int, fragment: str) -> None:
    """The command failed with ``code`` and said why in one line (no traceback)."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cleaninbox: error: ")
    assert fragment in lines[0], lines[0]


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def child_env(**extra: str) -> dict[str, str]:
    """This environment without what would point a child at the checkout or its data."""
    env = {k: v for k, v in os.environ.items() if k not in ("BANKING77_DIR", "PYTHONPATH")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's files as a clone has them, in a directory far from the checkout:
    the tracked files, and the new ones not ignored (what the next commit holds)."""
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
    assert listed.returncode == 0, listed.stderr
    target = tmp_path_factory.mktemp("elsewhere") / "cleaninbox"
    for name in filter(None, listed.stdout.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not copied
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


# --- a clean repository -------------------------------------------------------------------


def test_no_run_time_file_is_committed_and_gitignore_covers_them() -> None:
    tracked = git("ls-files", "models", "var", "runs").stdout.split()
    assert tracked == ["models/README.md"], "run-time files are committed: git rm --cached"
    run_time = [
        "models/promotions.jsonl",
        "models/current",
        "models/20260101-000000-abcdef0/model.onnx",
        "var/demo/state.db",
        "runs/sweep.db",
        "cleaninbox.yaml",
    ]
    for path in run_time:
        assert git("check-ignore", "--no-index", "-q", path).returncode == 0, path
    for path in ("models/README.md", "configs/cleaninbox.example.yaml", "data/banking77/train.csv"):
        assert git("check-ignore", "--no-index", "-q", path).returncode == 1, path


def test_rollback_without_history_says_so_in_one_line(tmp_path: Path) -> None:
    models = tmp_path / "models"
    one_line_error(run("models", "rollback", "--models-dir", str(models)), 2, "nothing to roll")
    models.mkdir()
    one_line_error(run("models", "rollback", "--models-dir", str(models)), 2, "no model promoted")

    # A bundle served by hand (or a checkout whose log was never committed): no log.
    (models / "v1").mkdir()
    (models / "current").symlink_to("v1", target_is_directory=True)
    one_line_error(
        run("models", "rollback", "--models-dir", str(models)), 2, "no promotion recorded"
    )
    log = models / "promotions.jsonl"
    log.write_text(json.dumps({"version": "v1", "previous": None}) + "\n")
    one_line_error(
        run("models", "rollback", "--models-dir", str(models)), 2, "v1 has no recorded predecessor"
    )
    log.write_text("{not json\n")
    one_line_error(run("models", "rollback", "--models-dir", str(models)), 2, "line 1 is not JSON")
    assert (models / "current").resolve() == (models / "v1").resolve()


# --- logs that read well in files ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.trains
def test_training_log_in_a_file_has_one_line_per_epoch_and_no_bars(tmp_path: Path) -> None:
    """``train.progress`` on, stderr a file: no carriage-return bar updates, a line an epoch."""
    epochs = 2
    cheapest = {  # configs/train-tiny.yaml cut to seconds: 75 rows, no robustness sets
        "train.progress": "true",
        "train.epochs": str(epochs),
        "train.early_stopping_patience": str(epochs),
        "train.batch_size": "8",  # ten steps an epoch: a bar would update many times
        "train.paraphrases": "false",
        "train.wise_alpha": "null",
        "data.train_subset": "100",
        "data.test_subset": "40",
        "data.robustness_dir": "null",
        "model.out_of_scope_class": "false",
        "report.email_eval": "false",
        "report.sample_plots": "0",
        "export.auto_keep_fp32": "false",
        "export.min_agreement": "0",
        "export.max_accuracy_drop": "1",
    }
    overrides = [arg for k, v in cheapest.items() for arg in ("--set", f"{k}={v}")]
    log = tmp_path / "train.log"
    with log.open("wb") as stderr:
        done = subprocess.run(
            [*TRAIN, "--config", str(TINY), *overrides, "--output", str(tmp_path / "models")],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=child_env(),
            timeout=300,
        )
    text = log.read_bytes().decode()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text, "progress-bar updates in the log file"
    lines = text.splitlines()
    epoch_lines = [line for line in lines if re.match(r"epoch \d+: loss ", line)]
    assert len(epoch_lines) == epochs, lines
    assert len(lines) < 40, lines  # one line a stage; third-party warnings take two
    assert any(line.startswith("bundle written: ") for line in lines)


# --- the demo from a clone anywhere -------------------------------------------------------


@pytest.mark.posix
def test_demo_runs_from_a_clone_elsewhere_without_environment(
    clone: Path, tiny_bundle: Path
) -> None:
    """``cleaninbox demo`` in a clone far from this checkout, no BANKING77_DIR: banking77
    and the robustness sets come from the clone itself. The model is the session's tiny
    bundle, promoted in the clone, so the demo skips training (its quick model takes
    minutes; the training path is tested elsewhere)."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import daemon, training; print(daemon.__file__, training.__file__)",
        ],
        cwd=clone,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert all(Path(p).is_relative_to(clone) for p in probe.stdout.split()), probe
    models = clone / "models"
    shutil.copytree(tiny_bundle, models / tiny_bundle.name)
    promote(models, tiny_bundle.name)
    emails = 40
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "demo", "--emails", str(emails)],
        cwd=clone,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"model {tiny_bundle.name}" in done.stdout
    # Every delivered message was decided: the folder counts add up to the mail sent.
    counts = re.findall(r"^ +(\d+)  \S", done.stdout, flags=re.MULTILINE)
    assert sum(map(int, counts)) == emails + emails // 5, done.stdout
    assert (clone / "var" / "demo" / "mail" / "cur").is_dir()


# --- the wheel ----------------------------------------------------------------------------


def _wheel(clone: Path, dist: Path) -> Path:
    """``python -m build`` (sdist, then the wheel from it) without network: the build
    backend is the one installed here (the dev extra has setuptools, wheel and build)."""
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(clone)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (wheel,) = dist.glob("cleaninbox-*.whl")
    return wheel


def _check_contents(wheel: Path, clone: Path) -> None:
    """The two packages, every module of them, their metadata; nothing else, nothing big."""
    with zipfile.ZipFile(wheel) as archive:
        infos = archive.infolist()
        entry_points = archive.read(
            next(i.filename for i in infos if i.filename.endswith(".dist-info/entry_points.txt"))
        ).decode()
    names = {i.filename for i in infos}
    tops = {name.split("/")[0] for name in names}
    assert tops == {"daemon", "training", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    assert all(i.file_size < 1_000_000 for i in infos), [i.filename for i in infos]
    assert not [n for n in names if re.search(r"\.(onnx|safetensors|pt|csv|jsonl)$", n)]
    modules = {
        str(p.relative_to(clone))
        for top in ("daemon", "training")
        for p in (clone / top).rglob("*.py")
    }
    assert {n for n in names if n.endswith(".py")} == modules
    assert "cleaninbox = daemon.cli:main" in entry_points


def _clean_venv(path: Path, wheel: Path) -> Path:
    """A new virtualenv (no system site-packages) with the wheel installed ``--no-deps``
    from the file, offline; the run-time dependencies are this environment's, on a path
    entry after the venv's own site-packages (no pip index, no download)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    installed = subprocess.run(
        [*PIP, "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_runtime_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return site


@pytest.mark.slow
@pytest.mark.posix
def test_wheel_holds_only_the_packages_and_runs_in_a_clean_venv(
    clone: Path, tmp_path: Path, tiny_bundle: Path
) -> None:
    wheel = _wheel(clone, tmp_path / "dist")
    _check_contents(wheel, clone)
    venv = tmp_path / "venv"
    site = _clean_venv(venv, wheel)

    def cleaninbox(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / "cleaninbox"), *args],
            cwd=tmp_path,  # far from the checkout: only the wheel provides the packages
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=120,
        )

    version = cleaninbox("--version")
    assert version.stdout.strip() == f"cleaninbox, version {daemon.__version__}", version
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import daemon, training; print(daemon.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert Path(probe.stdout.strip()).is_relative_to(site), probe
    classified = cleaninbox("classify", "--model", str(tiny_bundle), "I lost my card")
    assert classified.returncode == 0, classified.stderr
    assert "intent" in json.loads(classified.stdout.splitlines()[0])

    # python-daemon installed beside it (its metadata is what pip leaves): refused.
    fake = site / "python_daemon-3.1.2.dist-info"
    fake.mkdir()
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: python-daemon\nVersion: 3.1.2\n")
    clash = cleaninbox("--version")
    assert clash.returncode == 1, clash
    assert clash.stderr.splitlines() == [
        "cleaninbox: error: python-daemon 3.1.2 is installed in this environment and also "
        f"uses the import name 'daemon'; {CLASH_ADVICE}"
    ]
    shutil.rmtree(fake)
    # python-daemon installed after it: its __init__.py replaced CleanInbox's.
    (site / "daemon" / "__init__.py").write_text(
        '"""python-daemon"""\n__all__ = ["DaemonContext"]\n'
    )
    clash = cleaninbox("models", "list")
    assert clash.returncode == 1, clash
    (line,) = clash.stderr.splitlines()
    assert "is not CleanInbox's" in line and CLASH_ADVICE in line, line


def test_python_daemon_beside_cleaninbox_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert import_name_clash() is None
    fake = tmp_path / "python_daemon-3.0.1.dist-info"
    fake.mkdir()
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: python-daemon\nVersion: 3.0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    one_line_error(run("--version"), 1, "python-daemon 3.0.1 is installed")
    one_line_error(run("models", "list"), 1, "own virtualenv")


def test_the_data_is_found_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run outside the checkout without BANKING77_DIR, commands use the repository's copy;
    the variable, and a data/banking77 under the current directory, still come first."""
    from daemon.cli.common import PROJECT_BANKING77, banking77_dir

    monkeypatch.delenv("BANKING77_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert banking77_dir(None) == PROJECT_BANKING77
    assert (PROJECT_BANKING77 / "train.csv").is_file()
    (tmp_path / "data" / "banking77").mkdir(parents=True)
    assert banking77_dir(None) == Path("data/banking77")
    monkeypatch.setenv("BANKING77_DIR", "/elsewhere")
    assert banking77_dir(None) == Path("/elsewhere")


# -- the lock files ---------------------------------------------------------------------


def _check_lock() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_lock", REPO / "scripts/check_lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_locks_agree_with_pyproject_and_disagreements_are_named() -> None:
    """`make lint` runs scripts/check_lock.py: CI fails when pyproject.toml's dependencies
    and requirements/*.txt part (a dependency added, dropped, or its range moved)."""
    import tomllib

    check: Any = _check_lock()
    assert check.main() == 0
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    lock = (REPO / "requirements/daemon.txt").read_text()
    assert check.problems(pyproject, "daemon.txt", lock, ("postgresql",)) == []

    added = json.loads(json.dumps(pyproject))
    added["project"]["dependencies"].append("rich>=13")
    assert check.problems(added, "daemon.txt", lock, ("postgresql",)) == [
        "daemon.txt: rich>=13 is in pyproject.toml but not locked"
    ]
    dropped = json.loads(json.dumps(pyproject))
    dropped["project"]["dependencies"] = [
        d for d in dropped["project"]["dependencies"] if not d.startswith("stamina")
    ]
    (line,) = check.problems(dropped, "daemon.txt", lock, ("postgresql",))
    assert line.startswith("daemon.txt: stamina==") and "no longer names it" in line
    moved = json.loads(json.dumps(pyproject))
    moved["project"]["dependencies"] = [
        "numpy<1" if d.startswith("numpy") else d for d in moved["project"]["dependencies"]
    ]
    (line,) = check.problems(moved, "daemon.txt", lock, ("postgresql",))
    assert "numpy==" in line and "does not satisfy numpy<1" in line
