"""Bad configuration and security (issue 4): one clear line naming the problem, exit code 2,
no server change; TLS verified by default; the password never appears anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from daemon.config.settings import load_settings
from daemon.service.supervisor import Service
from tests.dovecot import PASSWORD, Dovecot, free_port
from tests.mail_fixtures import MailUser, cli, email, mid, snapshot


def edit(workdir: Path, **account: object) -> None:
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    settings["accounts"][0].update(account)
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"port": "free"}, "refused"),
        ({"host": "no-such-host.invalid"}, "cannot resolve host 'no-such-host.invalid'"),
        ({"ca_file": None}, "failed verification"),
        ({"password_env": "WRONG_PASSWORD"}, "failed (check username and password)"),
        ({"folders": ["INBOX", "Nowhere"]}, "folder(s) not found: Nowhere"),
    ],
    ids=["wrong-port", "wrong-host", "tls-unverified", "wrong-password", "missing-folder"],
)
def test_bad_account_settings(
    workdir: Path, mail_user: MailUser, change: dict[str, object], fragment: str
) -> None:
    mail_user.append(email("card stolen", 1))
    before = snapshot(mail_user)
    if change.get("port") == "free":
        change = {"port": free_port()}
    edit(workdir, **change)
    result = cli(
        workdir,
        "check-config",
        "--connect",
        check=False,
        env={"WRONG_PASSWORD": "not-the-password"},
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("cleaninbox:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    once = cli(workdir, "once", check=False, env={"WRONG_PASSWORD": "not-the-password"})
    assert once.returncode != 0
    assert snapshot(mail_user) == before


def test_non_ascii_folder_names(workdir: Path, mail_user: MailUser) -> None:
    with mail_user.client() as client:
        client.create_folder("Eingang-ä")
    edit(workdir, folders=["Eingang-ä"])
    rules = yaml.safe_load((workdir / "rules.yaml").read_text())
    rules["rules"][-1]["actions"] = [{"move": "Triage/Überweisungen"}]
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True))
    cli(workdir, "once")
    raw = email("I sent money to a friend", 2)
    mail_user.append(raw, folder="Eingang-ä")
    cli(workdir, "once")
    assert mid(raw) in mail_user.messages("Triage/Überweisungen")
    with mail_user.client() as client:
        client.folder_encode = False  # the wire form is modified UTF-7
        names = [name for _f, _d, name in client.list_folders()]
    assert b"Triage/&ANw-berweisungen" in names or "Triage/&ANw-berweisungen" in names


def test_the_password_is_never_written_anywhere(
    workdir: Path, mail_user: MailUser, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = yaml.safe_load((workdir / "cleaninbox.yaml").read_text())
    settings["log_level"] = "debug"
    (workdir / "cleaninbox.yaml").write_text(yaml.safe_dump(settings))
    outputs = []
    outputs.append(cli(workdir, "once"))
    mail_user.append(email("how do I change my PIN", 3))
    outputs.append(cli(workdir, "once"))
    outputs.append(cli(workdir, "history", "--json"))
    outputs.append(cli(workdir, "check-config", "--connect"))
    wrong = "a-wrong-S3cret"
    outputs.append(cli(workdir, "once", check=False, env={"CLEANINBOX_TEST_PASSWORD": wrong}))
    for result in outputs:
        for secret in (PASSWORD, wrong):
            assert secret not in result.stdout and secret not in result.stderr
    for path in (workdir / "var").iterdir():
        assert PASSWORD.encode() not in path.read_bytes(), path
    monkeypatch.setenv("CLEANINBOX_TEST_PASSWORD", PASSWORD)
    service = Service(load_settings(workdir / "cleaninbox.yaml"), registry=CollectorRegistry())
    try:
        service.once()
        assert PASSWORD.encode() not in generate_latest(service.metrics.registry)
        assert PASSWORD not in repr(service.settings)
    finally:
        service.close()
