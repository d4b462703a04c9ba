"""Settings: YAML + environment, unknown keys are errors, secrets stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from daemon.config.settings import load_settings
from daemon.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

IMAP = {"name": "w", "host": "imap.example.org", "username": "me", "password_env": "PW"}


def write(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "cleaninbox.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_example_settings_document_every_key() -> None:
    text = (REPO / "configs/cleaninbox.example.yaml").read_text()
    settings = load_settings(REPO / "configs/cleaninbox.example.yaml")
    from daemon.config import settings as schema

    for model in (
        schema.Settings,
        schema.Account,
        schema.HttpSettings,
        schema.ClassifierSettings,
        schema.OAuth2Settings,
        schema.RetrainSchedule,
    ):
        for name in model.model_fields:
            assert f"{name}:" in text, f"{model.__name__}.{name} is not in the example"
    assert settings.accounts[0].port == 993


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, {"accounts": [IMAP]}))
    assert settings.http.listen == "127.0.0.1:9464"
    assert settings.model == tmp_path / "models/current"
    assert settings.state == tmp_path / "var/state.db"
    assert settings.accounts[0].folders == ["INBOX"]
    assert settings.accounts[0].tls == "implicit"
    assert settings.accounts[0].tls_verify


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEANINBOX_DRY_RUN", "true")
    monkeypatch.setenv("CLEANINBOX_HTTP__LISTEN", "127.0.0.1:9999")
    settings = load_settings(write(tmp_path, {"dry_run": False, "accounts": [IMAP]}))
    assert settings.dry_run is True
    assert settings.http.port == 9999


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"acounts": []}, "acounts: unknown key"),
        ({"accounts": [{**IMAP, "hots": "x"}]}, "accounts.0.hots: unknown key"),
        ({"accounts": [{**IMAP, "tls": "none"}]}, "allow_plaintext"),
        (
            {"accounts": [{**IMAP, "tls": "none", "allow_plaintext": True}]},
            "only permitted to a loopback host",
        ),
        ({"accounts": [{**IMAP, "password_file": "pw"}]}, "exactly one of password_env"),
        ({"accounts": [{"name": "m", "kind": "maildir"}]}, "path is required"),
        ({"accounts": [{**IMAP, "kind": "pop3"}]}, "accounts.0.kind"),
        ({"accounts": [IMAP, IMAP]}, "used twice"),
        ({"accounts": [{**IMAP, "name": "a b"}]}, "accounts.0.name"),
        ({"http": {"listen": "9464"}}, "http.listen"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"state": "mysql://db/x"}, "unsupported database 'mysql'"),
        ({"state": "https://example.org/state.db"}, "unsupported database 'https'"),
        ({"state": "sqlite:///var/state.db"}, "give a SQLite file path"),
        ({"state": "postgresql://"}, "names no host or database"),
        ({"state_password_env": "PGPW"}, "apply only to a postgresql:// state"),
        (
            {"state": "postgresql://h/d", "state_password_env": "A", "state_password_file": "f"},
            "at most one of state_password_env",
        ),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, data))
    assert fragment in str(info.value)
    assert str(tmp_path / "cleaninbox.yaml") in str(info.value)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("accounts: [\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line"):
        load_settings(bad)


def test_passwords_come_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    settings = load_settings(
        write(
            tmp_path,
            {
                "accounts": [
                    IMAP,
                    {**IMAP, "name": "f", "password_env": None, "password_file": "pw"},
                ]
            },
        )
    )
    with pytest.raises(ConfigError, match="environment variable PW is not set"):
        settings.accounts[0].password()
    monkeypatch.setenv("PW", "from-env")
    assert settings.accounts[0].password().get_secret_value() == "from-env"
    assert settings.accounts[1].password().get_secret_value() == "from-file"
    assert "from-env" not in repr(settings)
    assert "from-env" not in settings.model_dump_json()


def test_oauth2_provider_presets_and_relative_token_file(tmp_path: Path) -> None:
    oauth = {
        "provider": "microsoft",
        "tenant": "contoso",
        "client_id": "app",
        "refresh_token_file": "secrets/rt",
    }
    account = {**IMAP, "password_env": None, "oauth2": oauth}
    settings = load_settings(write(tmp_path, {"accounts": [account]}))
    got = settings.accounts[0].oauth2
    assert got is not None
    assert got.token_url == "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
    assert "IMAP.AccessAsUser.All" in (got.scope or "")
    assert got.refresh_token_file == tmp_path / "secrets/rt"
    with pytest.raises(ConfigError, match=r"no refresh token yet.*cleaninbox auth w"):
        got.refresh_token("w")


@pytest.mark.parametrize(
    ("oauth", "extra", "message"),
    [
        ({"client_id": "a", "refresh_token_env": "X"}, {}, "token_url is required"),
        ({"provider": "google", "client_id": "a"}, {}, "give refresh_token_file"),
        (
            {"provider": "google", "client_id": "a", "refresh_token_env": "X"},
            {"password_env": "PW"},
            "either oauth2 or a password",
        ),
    ],
)
def test_oauth2_settings_errors(
    tmp_path: Path, oauth: dict[str, object], extra: dict[str, object], message: str
) -> None:
    account = {**IMAP, "password_env": None, "oauth2": oauth, **extra}
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, {"accounts": [account]}))


def test_retrain_schedule_is_validated(tmp_path: Path) -> None:
    bad = {"retrain": {"cron": "every sunday", "config": "train.yaml"}}
    with pytest.raises(ConfigError, match=r"retrain\.cron.*not a crontab expression"):
        load_settings(write(tmp_path, bad))
    good = {"retrain": {"cron": "0 3 * * 0", "config": "configs/train.yaml"}}
    settings = load_settings(write(tmp_path, good))
    assert settings.retrain is not None
    assert settings.retrain.config == tmp_path / "configs/train.yaml"


def test_state_is_a_path_or_a_postgresql_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path is relative to the settings file; a URL is kept as given, its password
    read from the env var or file named beside it (never from the settings file)."""
    assert load_settings(write(tmp_path, {"state": "var/s.db"})).state == tmp_path / "var/s.db"
    url = "postgresql://cleaninbox@db.example.org:5433/triage"
    monkeypatch.setenv("PGPW", "pg-secret")
    settings = load_settings(write(tmp_path, {"state": url, "state_password_env": "PGPW"}))
    assert settings.state == url
    assert settings.state_password() == "pg-secret"
    (tmp_path / "pw").write_text("from-file\n")
    settings = load_settings(write(tmp_path, {"state": url, "state_password_file": "pw"}))
    assert settings.state_password() == "from-file"
    assert load_settings(write(tmp_path, {"state": url})).state_password() is None


def test_accounts_dir_adds_accounts_file_by_file(tmp_path: Path) -> None:
    """One account or a list per file, in file-name order, paths relative to each file;
    a bad file is one error naming the file and the key."""
    accounts = tmp_path / "accounts.d"
    accounts.mkdir()
    (accounts / "b.yaml").write_text(
        yaml.safe_dump([{**IMAP, "name": "b1"}, {**IMAP, "name": "b2"}])
    )
    (accounts / "a.yaml").write_text(
        yaml.safe_dump({**IMAP, "name": "a", "password_env": None, "password_file": "pw"})
    )
    (accounts / ".a.yaml.swp").write_text("not yaml: [")  # editors' scratch files are ignored
    (accounts / "notes.txt").write_text("ignored")
    settings = load_settings(write(tmp_path, {"accounts": [IMAP], "accounts_dir": "accounts.d"}))
    assert [a.name for a in settings.accounts] == ["w", "a", "b1", "b2"]
    assert settings.accounts[1].password_file == accounts / "pw"

    (accounts / "c.yaml").write_text(yaml.safe_dump({**IMAP, "name": "c", "hots": "x"}))
    with pytest.raises(ConfigError, match=r"account file .*c\.yaml: hots: unknown key"):
        load_settings(tmp_path / "cleaninbox.yaml")
    (accounts / "c.yaml").write_text(yaml.safe_dump({**IMAP, "name": "a"}))
    with pytest.raises(ConfigError, match="account name 'a' is used twice"):
        load_settings(tmp_path / "cleaninbox.yaml")
    (accounts / "c.yaml").unlink()
    with pytest.raises(ConfigError, match="is not a directory"):
        load_settings(write(tmp_path, {"accounts_dir": "nowhere"}))
