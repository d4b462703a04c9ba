"""Deploy artifacts, checked by the real tools: systemd-analyze (verify, security score),
promtool (rules, rule unit tests, config), docker-compose config, doveconf,
kubernetes-validate, check-jsonschema (the CloudNativePG Cluster, against the part of its
CRD schema vendored in tests/data), and the dashboard and alerts against the metrics the
daemon actually exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from daemon.config.settings import load_settings
from daemon.metrics import Metrics

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
METRIC = re.compile(r"\bcleaninbox_[a-z0-9_]+")
# What the scale-out setup exports to watch the leases (daemon/metrics.py).
REPLICA_METRICS = (
    "cleaninbox_leases_held",
    "cleaninbox_lease_takeovers_total",
    "cleaninbox_leases_lost_total",
    "cleaninbox_lease_renew_failures_total",
    "cleaninbox_fenced_writes_total",
    "cleaninbox_accounts_unheld",
    "cleaninbox_database_up",
)


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
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
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
        "cleaninbox_memory_decisions_total",  # ... and what the correction memory decided
    ):
        assert wanted in text, wanted
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # No two panels cover the same cell of the 24-column grid (Grafana would shift them).
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        for cell in (
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        ):
            assert cell not in cells, f"{panel['title']} overlaps {cells[cell]}"
            cells[cell] = panel["title"]


def test_dashboard_has_a_replicas_row_with_the_lease_panels() -> None:
    panels = json.loads((DEPLOY / "grafana/cleaninbox.json").read_text())["panels"]
    rows = [p for p in panels if p["type"] == "row"]
    assert [r["title"] for r in rows] == ["Replicas"]
    row = rows[0]
    assert row["collapsed"] is False and row["panels"] == []  # its panels follow it
    below = [p for p in panels if p["gridPos"]["y"] > row["gridPos"]["y"]]
    exprs = {
        m: e for p in below for t in p["targets"] for e in [t["expr"]] for m in METRIC.findall(e)
    }
    assert set(REPLICA_METRICS) <= set(exprs), sorted(set(REPLICA_METRICS) - set(exprs))
    # Per replica, except the one figure all replicas agree on (accounts no one holds).
    for metric in set(REPLICA_METRICS) - {"cleaninbox_accounts_unheld"}:
        assert "by (replica)" in exprs[metric], exprs[metric]


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
        # scale-out
        "CleanInboxAccountsUnheld",
        "CleanInboxDatabaseDown",
        "CleanInboxFencedWrites",
        "CleanInboxLeaseRenewFailures",
    } <= names
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]  # says what to do
    # Every alert is exercised by a unit test (promtool only runs the tests written).
    tests = yaml.safe_load((DEPLOY / "prometheus/alerts.test.yaml").read_text())["tests"]
    tested = {c["alertname"] for test in tests for c in test["alert_rule_test"]}
    assert names <= tested, sorted(names - tested)
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


DAEMONS = ("cleaninbox-1", "cleaninbox-2")


def test_compose_stack_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compose = tool("docker-compose")
    env = {"PATH": "/usr/bin:/bin"}
    config = subprocess.run(
        [compose, "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert config.returncode == 0, config.stderr
    stack = yaml.safe_load(config.stdout)
    services = stack["services"]
    assert set(services) == {"trainer", "dovecot", "postgres", *DAEMONS, "prometheus", "grafana"}
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    # its data in a named volume, kept across `docker compose down`
    data = [v.split(":")[0] for v in postgres["volumes"] if ":/var/lib/postgresql/data" in v]
    assert data and data[0] in stack["volumes"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    scraped = {
        target
        for job in prometheus["scrape_configs"]
        for c in job["static_configs"]
        for target in c["targets"]
    }
    published = " ".join(services["dovecot"]["ports"])
    replicas, ports = set(), set()
    for name in DAEMONS:
        daemon = services[name]
        assert daemon["read_only"] is True
        assert daemon["cap_drop"] == ["ALL"]
        assert daemon["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert daemon["network_mode"] == "service:dovecot"  # plaintext IMAP on loopback only
        # What the daemon makes of its settings file and environment: the image's, then
        # the stack's (deploy/docker/Dockerfile sets CLEANINBOX_STATE to its SQLite default,
        # which wins over the settings file unless the stack overrides it).
        with monkeypatch.context() as patch:
            patch.setenv("CLEANINBOX_STATE", "/var/lib/cleaninbox/state.db")
            for key, value in daemon["environment"].items():
                patch.setenv(key, str(value))
            settings = load_settings(DEPLOY / "compose/cleaninbox.yaml")
            password = settings.state_password()
        assert isinstance(settings.state, str)
        url = urlsplit(settings.state)
        assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/cleaninbox")
        assert url.username == postgres["environment"]["POSTGRES_USER"]
        assert password == postgres["environment"]["POSTGRES_PASSWORD"]
        assert settings.replica == name
        replicas.add(settings.replica)
        port = settings.http.listen.rsplit(":", 1)[1]
        ports.add(port)
        assert f"127.0.0.1:{port}:{port}" in published  # in dovecot's namespace
        assert f"dovecot:{port}" in scraped
        assert f"127.0.0.1:{port}/healthz" in " ".join(daemon["healthcheck"]["test"])
    assert len(replicas) == len(ports) == len(DAEMONS)  # distinct names, no port clash
    # The trainer needs nothing from the host: banking77 is in the training image.
    assert [v.split(":")[1] for v in services["trainer"]["volumes"]] == ["/var/lib/cleaninbox"]
    # Its parts, each checked by the tool that reads it.
    settings = load_settings(DEPLOY / "compose/cleaninbox.yaml")
    assert settings.accounts[0].host == "127.0.0.1"  # plaintext only on loopback
    doveconf = subprocess.run(
        [tool("doveconf"), "-n", "-c", str(DEPLOY / "compose/dovecot.conf")],
        capture_output=True,
        text=True,
    )
    assert doveconf.returncode == 0, doveconf.stderr
    check = subprocess.run(
        [tool("promtool"), "check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


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


SCALE_OUT = DEPLOY / "k8s/scale-out"
CNPG_SCHEMA = REPO / "tests/data/cnpg-cluster-v1.schema.yaml"
# Replaces postgres-cluster.yaml with a managed PostgreSQL; not applied by default.
MANAGED_POSTGRES = "postgres-managed.example.yaml"


def _kubernetes_validate(files: list[Path]) -> str:
    """kubernetes-validate --strict over ``files`` (must pass); its report."""
    validate = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict"]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr
    return validate.stdout + validate.stderr


def _check_jsonschema(schema: Path, document: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--schemafile",
            str(schema),
            str(document),
        ],
        capture_output=True,
        text=True,
    )


def _by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


def _scale_out() -> dict[str, Any]:
    """The scale-out manifests by file stem (kustomization.yaml aside)."""
    return {
        f.stem: yaml.safe_load(f.read_text())
        for f in sorted(SCALE_OUT.glob("*.yaml"))
        if f.name != "kustomization.yaml"
    }


def _pod(workload: dict[str, Any]) -> Any:
    """The pod spec of a Deployment or a CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def test_scale_out_manifests_validate_against_the_api_schemas() -> None:
    manifests = [f for f in sorted(SCALE_OUT.glob("*.yaml")) if f.name != "kustomization.yaml"]
    report = _kubernetes_validate(manifests)
    for core in (
        "deployment", "pdb", "configmap", "accounts-configmap", "secret", "models-pvc",
        "service", "metrics-service", "retrain-cronjob", "postgres-managed.example",
    ):  # fmt: skip
        assert f"{core}.yaml passed" in report, core
    kustomization = yaml.safe_load((SCALE_OUT / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        f.name for f in manifests if f.name != MANAGED_POSTGRES
    )


def test_scale_out_replicas_share_the_cloudnative_pg_database() -> None:
    docs = _scale_out()
    cluster = docs["postgres-cluster"]
    assert cluster["spec"]["instances"] == 3
    initdb = cluster["spec"]["bootstrap"]["initdb"]
    assert initdb == {"database": "cleaninbox", "owner": "cleaninbox"}
    app_secret = f"{cluster['metadata']['name']}-app"  # the operator's: username, password, uri
    managed = docs[MANAGED_POSTGRES.removesuffix(".yaml")]
    assert managed["metadata"]["name"] == app_secret  # a drop-in for a managed PostgreSQL
    assert urlsplit(managed["stringData"]["uri"]).scheme == "postgresql"

    deployment = docs["deployment"]["spec"]
    assert deployment["replicas"] == 3
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    pod = _pod(docs["deployment"])
    assert pod["terminationGracePeriodSeconds"] >= 15  # drain (10 s), then release the leases
    assert pod["securityContext"]["runAsNonRoot"] is True
    daemon = pod["containers"][0]
    assert daemon["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    env = _by_name(daemon["env"])
    assert env["CLEANINBOX_REPLICA"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    state = {"secretKeyRef": {"name": app_secret, "key": "uri"}}
    assert env["CLEANINBOX_STATE"]["valueFrom"] == state
    assert daemon["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert daemon["readinessProbe"]["httpGet"]["path"] == "/readyz"
    resources = daemon["resources"]
    assert int(resources["requests"]["memory"].removesuffix("Mi")) >= 300  # ~300 MB resident
    assert "cpu" not in resources["limits"]  # throttling would delay renewals and lose leases
    # Voluntary disruptions (drains, upgrades) take one replica at a time.
    pdb = docs["pdb"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"] == deployment["selector"]["matchLabels"]
    # /readyz fails with one failing account: that must not block every node drain.
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_scale_out_settings_load_with_the_accounts_configmap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = _scale_out()
    pod = _pod(docs["deployment"])
    volumes = _by_name(pod["volumes"])
    mounts = _by_name(pod["containers"][0]["volumeMounts"])
    text = docs["configmap"]["data"]["cleaninbox.yaml"]
    raw = yaml.safe_load(text)
    assert "state" not in raw  # from the Secret: the image's CLEANINBOX_STATE would win
    accounts = docs["accounts-configmap"]
    assert volumes["accounts"]["configMap"]["name"] == accounts["metadata"]["name"]
    assert raw["accounts_dir"] == mounts["accounts"]["mountPath"]
    assert Path(raw["model"]).is_relative_to(mounts["models"]["mountPath"])
    # The ConfigMaps as mounted, and the environment the Deployment gives.
    mounted = tmp_path / "accounts.d"
    mounted.mkdir()
    for name, account in accounts["data"].items():
        (mounted / name).write_text(account)
    (tmp_path / "cleaninbox.yaml").write_text(text)
    url = "postgresql://cleaninbox:pw@cleaninbox-db-rw.mail:5432/cleaninbox"
    monkeypatch.setenv("CLEANINBOX_STATE", url)
    monkeypatch.setenv("CLEANINBOX_ACCOUNTS_DIR", str(mounted))
    settings = load_settings(tmp_path / "cleaninbox.yaml")
    assert settings.state == url
    assert [a.name for a in settings.accounts] == ["work"]
    assert settings.http.listen == "0.0.0.0:9464"
    assert settings.http.token_env  # beyond loopback, /v1/classify needs a token


def test_scale_out_retrain_reads_postgres_and_writes_the_shared_models() -> None:
    docs = _scale_out()
    daemon_pod = _pod(docs["deployment"])
    daemon = daemon_pod["containers"][0]
    models = docs["models-pvc"]
    assert models["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica and the job
    daemon_models = _by_name(daemon_pod["volumes"])["models"]
    assert daemon_models["persistentVolumeClaim"]["claimName"] == models["metadata"]["name"]
    assert _by_name(daemon["volumeMounts"])["models"]["readOnly"] is True  # the job writes

    job = docs["retrain-cronjob"]["spec"]
    assert job["concurrencyPolicy"] == "Forbid"
    pod = _pod(docs["retrain-cronjob"])
    retrain = pod["containers"][0]
    args = retrain["args"]
    assert args[0] == "retrain"
    settings_mount = _by_name(daemon["volumeMounts"])["settings"]["mountPath"]
    assert args[args.index("--settings") + 1] == settings_mount
    settings = yaml.safe_load(docs["configmap"]["data"]["cleaninbox.yaml"])
    assert args[args.index("--models-dir") + 1] == str(Path(settings["model"]).parent)
    # The corrections come from the same database as the daemons'; no daemon state volume.
    env = _by_name(retrain["env"])
    assert env["CLEANINBOX_STATE"] == _by_name(daemon["env"])["CLEANINBOX_STATE"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == [models["metadata"]["name"]]
    assert "affinity" not in pod  # no node to share with a daemon
    # Reading the settings reads accounts_dir: the job mounts the accounts too.
    assert _by_name(retrain["volumeMounts"])["accounts"]["mountPath"] == settings["accounts_dir"]
    assert _by_name(pod["volumes"])["accounts"] == _by_name(daemon_pod["volumes"])["accounts"]
    assert retrain["securityContext"]["readOnlyRootFilesystem"] is True


def test_scale_out_metrics_come_from_every_replica() -> None:
    docs = _scale_out()
    labels = docs["deployment"]["spec"]["template"]["metadata"]["labels"]
    service, metrics = docs["service"], docs["metrics-service"]
    for each in (service, metrics):
        assert each["spec"]["selector"].items() <= labels.items()
    # A replica without its database is unready, and must still report database_up 0;
    # /v1/classify goes to ready replicas only.
    assert metrics["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"].get("publishNotReadyAddresses") is not True
    monitor = docs["servicemonitor"]["spec"]
    selector = monitor["selector"]["matchLabels"].items()
    assert selector <= metrics["metadata"]["labels"].items()
    assert not selector <= service["metadata"]["labels"].items()  # scraped once, not twice
    assert monitor["endpoints"][0]["port"] == metrics["spec"]["ports"][0]["name"]
    # job="cleaninbox", as the alerts (CleanInboxDown) expect
    assert metrics["metadata"]["labels"][monitor["jobLabel"]] == "cleaninbox"


def test_cloudnative_pg_cluster_matches_the_crd_schema(tmp_path: Path) -> None:
    manifest = SCALE_OUT / "postgres-cluster.yaml"
    check = _check_jsonschema(CNPG_SCHEMA, manifest)
    assert check.returncode == 0, check.stdout + check.stderr
    # The schema has teeth: a key initdb does not know (libpq's name for the database), a
    # cluster of no instances, both image fields.
    cluster = yaml.safe_load(manifest.read_text())
    broken = {
        "unknown-key": {**cluster["spec"], "bootstrap": {"initdb": {"dbname": "cleaninbox"}}},
        "empty": {**cluster["spec"], "instances": 0},
        "two-images": {**cluster["spec"], "imageName": "pg:16", "imageCatalogRef": {}},
    }
    for name, spec in broken.items():
        document = tmp_path / f"{name}.yaml"
        document.write_text(yaml.safe_dump({**cluster, "spec": spec}))
        refused = _check_jsonschema(CNPG_SCHEMA, document)
        assert refused.returncode == 1, (name, refused.stdout + refused.stderr)


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


def _fake_engine(bin_dir: Path, name: str, *, daemon_answers: bool) -> None:
    """A docker or podman command that says it was asked to build, and fails."""
    info = "exit 0" if daemon_answers else "echo 'Cannot connect to the daemon' >&2; exit 1"
    script = bin_dir / name
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = info ]; then {info}; fi\necho "{name} asked to $1" >&2\nexit 1\n'
    )
    script.chmod(0o755)


@pytest.mark.posix
@pytest.mark.parametrize(
    ("engines", "says"),
    [
        ({"docker": True}, "docker asked to build"),
        ({"docker": False, "podman": True}, "podman asked to build"),
        (
            {"docker": False},
            "docker is installed but its daemon does not answer (docker info), "
            "and podman is not installed",
        ),
        ({}, "neither docker nor podman is installed"),
    ],
    ids=["docker", "docker-cli-without-daemon", "docker-cli-only", "none"],
)
def test_make_image_takes_docker_only_where_its_daemon_answers(
    tmp_path: Path, engines: dict[str, bool], says: str
) -> None:
    """A docker CLI without a daemon (as on CI machines) is not an engine: podman builds."""
    for tool in ("dirname", "timeout"):
        (tmp_path / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    for name, answers in engines.items():
        _fake_engine(tmp_path, name, daemon_answers=answers)
    result = subprocess.run(
        ["/bin/bash", str(REPO / "scripts/images.sh"), "build"],
        env={"PATH": str(tmp_path), "IMAGES": "daemon"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert says in result.stderr, result.stderr
