"""Deploy artifacts, checked by the real tools: systemd-analyze (verify, security score),
promtool (rules, rule unit tests, config), docker-compose config, doveconf, and the
dashboard and alerts against the metrics the daemon actually exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from daemon.config.settings import load_settings
from daemon.metrics import Metrics

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
METRIC = re.compile(r"\bcleaninbox_[a-z0-9_]+")


def exported() -> set[str]:
    """Every series name the daemon can export, derived from its registry."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum"),
        "info": ("_info",),
    }
    for family in Metrics(CollectorRegistry()).registry.collect():
        names.update(family.name + s for s in suffixes[family.type])
    return names


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; `make system-deps` installs it")
    return path


def test_dashboard_queries_only_metrics_the_daemon_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana/cleaninbox.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used, "no queries found"
    assert used <= exported(), sorted(used - exported())
    # what issue 6 asks the dashboard to show
    text = json.dumps(dashboard)
    for wanted in (
        "cleaninbox_messages_processed_total",  # throughput by intent
        "cleaninbox_actions_total",  # ... and by action
        "cleaninbox_abstentions_total",  # abstention rate
        "cleaninbox_confidence_bucket",  # confidence over time
        "cleaninbox_inference_seconds_bucket",  # latency quantiles
        "cleaninbox_cycle_errors_total",  # errors by kind
        "cleaninbox_last_successful_cycle_timestamp_seconds",  # last good cycle
        "cleaninbox_model_info",  # model version
        "cleaninbox_corrections_total",  # corrections per day
    ):
        assert wanted in text, wanted
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_use_only_exported_metrics_and_pass_promtool() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used <= exported(), sorted(used - exported())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "CleanInboxAccountStale",
        "CleanInboxCycleErrors",
        "CleanInboxAbstentionSpike",
        "CleanInboxModelLoadFailed",
    } <= names
    promtool = tool("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus/alerts.yaml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yaml"],
        capture_output=True,
        text=True,
        cwd=DEPLOY / "prometheus",
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout


def _unit_with_real_binary(tmp_path: Path, name: str) -> Path:
    """The unit as shipped, with ExecStart pointing at this checkout's cleaninbox (verify
    checks that the binary exists)."""
    text = (DEPLOY / "systemd" / name).read_text()
    binary = Path(sys.executable).parent / "cleaninbox"
    unit = tmp_path / name
    for installed in ("/opt/cleaninbox/bin/cleaninbox", "/opt/cleaninbox-train/bin/cleaninbox"):
        text = text.replace(installed, str(binary))
    unit.write_text(text)
    return unit


def _security_score(unit: Path) -> float:
    security = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
    )
    assert security.returncode == 0, security.stderr
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert score is not None, security.stdout[-500:]
    return float(score.group(1))


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    unit = _unit_with_real_binary(tmp_path, "cleaninbox.service")
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert _security_score(unit) <= 2.0  # "OK" band; 1.2 when written
    text = unit.read_text()
    for setting in (
        "DynamicUser=yes",
        "StateDirectory=cleaninbox",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "MemoryMax=",
    ):
        assert setting in text, setting


def test_compose_stack_is_valid(tmp_path: Path) -> None:
    compose = tool("docker-compose")
    env = {"PATH": "/usr/bin:/bin", "BANKING77_DIR": str(tmp_path)}
    config = subprocess.run(
        [compose, "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert config.returncode == 0, config.stderr
    stack = yaml.safe_load(config.stdout)
    assert set(stack["services"]) == {"trainer", "dovecot", "cleaninbox", "prometheus", "grafana"}
    daemon = stack["services"]["cleaninbox"]
    assert daemon["read_only"] is True
    assert daemon["cap_drop"] == ["ALL"]
    # Without BANKING77_DIR the stack refuses to start with a sentence, not a bad mount.
    missing = subprocess.run(
        [compose, "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env={"PATH": env["PATH"]},
    )
    assert missing.returncode != 0
    assert "set BANKING77_DIR" in missing.stderr
    # Its parts, each checked by the tool that reads it.
    settings = load_settings(DEPLOY / "compose/cleaninbox.yaml")
    assert settings.accounts[0].host == "127.0.0.1"  # plaintext only on loopback
    doveconf = subprocess.run(
        [tool("doveconf"), "-n", "-c", str(DEPLOY / "compose/dovecot.conf")],
        capture_output=True,
        text=True,
    )
    assert doveconf.returncode == 0, doveconf.stderr
    prometheus = subprocess.run(
        [tool("promtool"), "check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert prometheus.returncode == 0, prometheus.stdout + prometheus.stderr


def test_kubernetes_manifests_validate_against_the_api_schemas(tmp_path: Path) -> None:
    k8s = DEPLOY / "k8s"
    files = sorted(k8s.glob("*.yaml"))
    manifests = [f for f in files if f.name != "kustomization.yaml"]
    validate = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict"]
        + [str(f) for f in manifests],
        capture_output=True,
        text=True,
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
    for core in ("configmap", "secret", "statefulset", "service", "retrain-cronjob"):
        assert f"{core}.yaml passed" in validate.stdout + validate.stderr, core
    docs = {f.stem: yaml.safe_load(f.read_text()) for f in manifests}
    assert sorted(yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]) == sorted(
        f.name for f in manifests
    )
    pod = docs["statefulset"]["spec"]["template"]["spec"]
    assert docs["statefulset"]["spec"]["replicas"] == 1  # the state lock allows one daemon
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    job = docs["retrain-cronjob"]["spec"]
    assert job["concurrencyPolicy"] == "Forbid"
    retrain = job["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert retrain["args"][0] == "retrain"
    assert retrain["securityContext"]["readOnlyRootFilesystem"] is True
    # The StatefulSet's claim for pod 0 is what the job mounts.
    claim = job["jobTemplate"]["spec"]["template"]["spec"]["volumes"][0]
    template = docs["statefulset"]["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert claim["persistentVolumeClaim"]["claimName"] == f"{template}-cleaninbox-0"
    # The ServiceMonitor (a CRD: no schema bundled) scrapes the Service's named port.
    monitor = docs["servicemonitor"]["spec"]
    assert monitor["endpoints"][0]["port"] == docs["service"]["spec"]["ports"][0]["name"]
    assert monitor["selector"]["matchLabels"] == docs["service"]["spec"]["selector"]
    # The settings in the ConfigMap are valid daemon settings.
    settings_file = tmp_path / "cleaninbox.yaml"
    settings_file.write_text(docs["configmap"]["data"]["cleaninbox.yaml"])
    settings = load_settings(settings_file)
    assert settings.http.listen == "0.0.0.0:9464"
    assert settings.http.token_env  # beyond loopback, /v1/classify needs a token


def test_retrain_timer_and_service_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    service = _unit_with_real_binary(tmp_path, "cleaninbox-retrain.service")
    timer = tmp_path / "cleaninbox-retrain.timer"
    timer.write_text((DEPLOY / "systemd/cleaninbox-retrain.timer").read_text())
    verify = subprocess.run(
        [analyze, "verify", str(service), str(timer)], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert _security_score(service) <= 1.0  # 0.6 "SAFE" when written
    text = service.read_text()
    assert "Nice=19" in text  # never in triage's way
    assert "User=cleaninbox" in text  # the daemon's dynamic user: both own the state
    assert "retrain --config" in text
