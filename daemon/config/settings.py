"""Daemon settings: a YAML file (``--config``, default ``./cleaninbox.yaml``) plus
``CLEANINBOX_*`` environment variables (nested with ``__``). Unknown keys are errors.

``configs/cleaninbox.example.yaml`` documents every key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from daemon.config.yaml_settings import YamlSettings, describe_validation_error
from daemon.errors import ConfigError

DEFAULT_CONFIG = Path("cleaninbox.yaml")
#: URL schemes ``state:`` accepts (PostgreSQL); any other ``scheme://`` is refused.
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret(
    owner: str, env: str | None, file: Path | None, *, strip: bool = True
) -> SecretStr | None:
    """A secret from an environment variable or a file (read on every call, so a rotated
    file is picked up without a restart); None when neither is configured. ``strip``:
    remove surrounding whitespace from a file's content, else only the line ending."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"{owner}: environment variable {env} is not set")
        return SecretStr(value)
    if file:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{owner}: cannot read {file}: {exc.strerror}") from exc
        return SecretStr(text.strip() if strip else text.rstrip("\r\n"))
    return None


def state_location(value: str) -> Path | str:
    """``state:`` as given: a path, or a PostgreSQL URL; any other URL is refused, never
    taken for a file name."""
    if "://" not in value:
        return Path(value)
    scheme = value.split("://", 1)[0].lower()
    if scheme not in POSTGRES_SCHEMES:
        raise ValueError(
            f"unsupported database {scheme!r}: give a SQLite file path "
            "or a postgresql://host/database URL"
        )
    if not value.split("://", 1)[1].strip("/"):
        raise ValueError("the postgresql:// URL names no host or database")
    return value


PROVIDERS = {
    # https://developers.google.com/identity/protocols/oauth2/native-app
    "google": {
        "auth_url": "https://accounts.google.com/o/oauth2/v2/auth",
        "token_url": "https://oauth2.googleapis.com/token",
        "scope": "https://mail.google.com/",
    },
    # https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
    "microsoft": {
        "auth_url": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
        "token_url": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        "scope": "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
    },
}


class OAuth2Settings(_Strict):
    """OAuth2 for an IMAP account (XOAUTH2 or OAUTHBEARER): a refresh token is exchanged
    for short-lived access tokens. ``cleaninbox auth ACCOUNT`` obtains the refresh token."""

    provider: Literal["google", "microsoft", "custom"] = Field(
        default="custom", description="google and microsoft fill in the URLs and scope."
    )
    tenant: str = Field(default="common", description="Microsoft tenant id or 'common'.")
    auth_url: str | None = Field(
        default=None, description="Authorization endpoint (for cleaninbox auth)."
    )
    token_url: str | None = Field(default=None, description="Token endpoint.")
    scope: str | None = Field(default=None, description="Space-separated scopes.")
    client_id: str = Field(description="The OAuth client (application) id.")
    client_secret_env: str | None = None
    client_secret_file: Path | None = Field(
        default=None, description="Installed-app clients may have no secret: leave both unset."
    )
    refresh_token_env: str | None = None
    refresh_token_file: Path | None = Field(
        default=None,
        description="Where the refresh token lives; cleaninbox auth writes it here, and a "
        "rotated token returned by the provider is written back.",
    )
    mechanism: Literal["xoauth2", "oauthbearer"] = "xoauth2"
    refresh_margin: float = Field(
        default=60.0, ge=0, description="Refresh an access token this many seconds early."
    )
    timeout: float = Field(default=30.0, gt=0, description="Token endpoint timeout, seconds.")

    @model_validator(mode="after")
    def _urls(self) -> OAuth2Settings:
        preset = PROVIDERS.get(self.provider, {})
        for key in ("auth_url", "token_url", "scope"):
            if getattr(self, key) is None and key in preset:
                setattr(self, key, preset[key].format(tenant=self.tenant))
        if not self.token_url:
            raise ValueError("token_url is required for provider: custom")
        if self.refresh_token_env and self.refresh_token_file:
            raise ValueError("give at most one of refresh_token_env or refresh_token_file")
        if not (self.refresh_token_env or self.refresh_token_file):
            raise ValueError(
                "give refresh_token_file (written by `cleaninbox auth`) or refresh_token_env"
            )
        return self

    def client_secret(self, account: str) -> str | None:
        secret = read_secret(
            f"account {account}: oauth2.client_secret",
            self.client_secret_env,
            self.client_secret_file,
        )
        return secret.get_secret_value() if secret else None

    def refresh_token(self, account: str) -> str:
        if self.refresh_token_file is not None and not self.refresh_token_file.exists():
            raise ConfigError(
                f"account {account}: no refresh token yet ({self.refresh_token_file} does "
                f"not exist); run `cleaninbox auth {account}`"
            )
        secret = read_secret(
            f"account {account}: oauth2.refresh_token",
            self.refresh_token_env,
            self.refresh_token_file,
        )
        if secret is None or not secret.get_secret_value():
            raise ConfigError(
                f"account {account}: the refresh token is empty; run `cleaninbox auth {account}`"
            )
        return secret.get_secret_value()


class Account(_Strict):
    """One mailbox to watch."""

    name: str = Field(description="Unique name, used in state, logs and metrics.")
    kind: Literal["imap", "gmail", "maildir"] = Field(
        default="imap",
        description="imap: any IMAP server; gmail: IMAP with Gmail's labels and message "
        "ids (host defaults to imap.gmail.com); maildir: a local Maildir++ tree.",
    )
    # IMAP
    host: str | None = Field(default=None, description="IMAP server host name.")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Default 993 for tls: implicit, else 143."
    )
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    tls_verify: bool = Field(default=True, description="Verify the server certificate.")
    ca_file: Path | None = Field(default=None, description="Extra CA bundle (PEM) to trust.")
    allow_plaintext: bool = Field(
        default=False, description="Permit tls: none; only ever to a loopback host."
    )
    username: str | None = None
    password_env: str | None = Field(default=None, description="Env var holding the password.")
    password_file: Path | None = Field(default=None, description="File holding the password.")
    oauth2: OAuth2Settings | None = Field(
        default=None, description="Log in with OAuth2 instead of a password."
    )
    timeout: float = Field(default=30.0, gt=0, description="Socket timeout, seconds.")
    # Maildir
    path: Path | None = Field(default=None, description="Maildir root (kind: maildir).")
    # Both
    folders: list[str] = Field(default_factory=lambda: ["INBOX"], min_length=1)
    poll_interval: float | None = Field(
        default=None, gt=0, description="Seconds between cycles; default: top-level value."
    )
    fetch_max_bytes: int = Field(
        default=256 * 1024, ge=4096, description="Fetch at most this much of each message."
    )
    batch_size: int = Field(default=100, ge=1, le=1000, description="Messages per batch.")
    feedback: bool = Field(
        default=False, description="Store model input texts (needed to learn from corrections)."
    )
    # IDLE
    mode: Literal["poll", "idle"] = Field(
        default="poll",
        description="poll: a cycle every poll_interval; idle: also keep one IMAP IDLE "
        "connection per watched folder and start a cycle as soon as mail arrives (the poll "
        "still runs as a safety net).",
    )
    idle_reissue: float = Field(
        default=1740.0,
        gt=0,
        le=1740.0,
        description="Seconds before IDLE is ended and re-issued (RFC 2177 asks for under "
        "29 minutes; lower it for servers or NAT boxes that drop quieter connections).",
    )
    liveness_timeout: float = Field(
        default=60.0,
        ge=2.0,
        description="A silently dead IDLE link is detected and replaced within this many "
        "seconds: after half of it without a word from the server the daemon ends IDLE and "
        "expects the server's reply within a quarter.",
    )
    gmail_move: Literal["archive", "label"] = Field(
        default="archive",
        description="Gmail: a move adds the destination label and removes the source's "
        "(archive: Gmail's own 'move'), or only adds the label (label).",
    )
    gmail_fetch_bytes_per_day: int = Field(
        default=2_000_000_000,
        ge=1_000_000,
        description="Gmail: stop fetching for the rest of the UTC day after this many bytes "
        "(Google allows 2,500 MB of IMAP download per day across all clients).",
    )
    max_connections: int = Field(
        default=5,
        ge=1,
        le=50,
        description="Connections this account may hold at once: 1 for triage, plus one per "
        "folder in mode: idle. Gmail allows 15 per account across all clients.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use letters, digits, '.', '_' or '-' (at most 64)")
        return value

    @model_validator(mode="after")
    def _check(self) -> Account:
        if self.kind == "gmail":
            self.host = self.host or "imap.gmail.com"
            if self.tls == "none":
                raise ValueError("Gmail requires TLS")
            if self.max_connections > 15:
                raise ValueError("Gmail allows at most 15 connections per account")
        if self.kind in ("imap", "gmail"):
            if not self.host:
                raise ValueError("host is required for kind: imap")
            if not self.username:
                raise ValueError("username is required for kind: imap")
            if self.oauth2 is not None:
                if self.password_env or self.password_file:
                    raise ValueError("give either oauth2 or a password, not both")
            elif bool(self.password_env) == bool(self.password_file):
                raise ValueError("give exactly one of password_env or password_file")
            if self.tls == "none":
                if not self.allow_plaintext:
                    raise ValueError(
                        "tls: none sends the password in clear; set allow_plaintext: true "
                        "(only permitted for a loopback host)"
                    )
                if not is_loopback(self.host):
                    raise ValueError(
                        f"tls: none is only permitted to a loopback host, not {self.host}"
                    )
            if self.port is None:
                self.port = 993 if self.tls == "implicit" else 143
            if self.mode == "idle" and 1 + len(self.folders) > self.max_connections:
                raise ValueError(
                    f"mode: idle needs {1 + len(self.folders)} connections (1 for triage + 1 "
                    f"per folder) but max_connections is {self.max_connections}"
                )
        elif self.mode == "idle":
            raise ValueError("mode: idle needs an IMAP or Gmail account (a Maildir has no IDLE)")
        elif self.path is None:
            raise ValueError("path is required for kind: maildir")
        return self

    def password(self) -> SecretStr:
        """Read the password from its env var or file (never stored in settings dumps);
        a password file keeps its spaces, only the line ending is dropped."""
        secret = read_secret(
            f"account {self.name}: password", self.password_env, self.password_file, strip=False
        )
        if secret is None:
            raise ConfigError(f"account {self.name}: no password configured")
        return secret


class HttpSettings(_Strict):
    enabled: bool = True
    listen: str = Field(default="127.0.0.1:9464", description="host:port for /metrics etc.")
    token_env: str | None = Field(
        default=None, description="Env var with a bearer token required by POST /v1/classify."
    )
    token_file: Path | None = None
    # The API shares the classifier and the process with triage: what one request may
    # cost is bounded here (docs/operations.md, "HTTP API limits").
    max_body_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="Request bodies larger than this are answered 413: at once when "
        "Content-Length says so, else as soon as the bytes read pass it.",
    )
    max_concurrent_classify: int = Field(
        default=2,
        ge=1,
        description="POST /v1/classify requests served at once; more are answered 429 with "
        "Retry-After at once, never queued.",
    )
    receive_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A request's headers must arrive within this of the connection opening "
        "(or of the previous answer on it), and its body within this of its headers: else "
        "the connection is closed (headers) or answered 408 (body).",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port, e.g. 127.0.0.1:9464")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def token(self) -> SecretStr | None:
        secret = read_secret("http token", self.token_env, self.token_file)
        if secret is not None and not secret.get_secret_value():
            raise ConfigError(f"http token: {self.token_env or self.token_file} is empty")
        return secret


class ClassifierSettings(_Strict):
    threads: int | None = Field(default=None, ge=1, description="onnxruntime intra-op threads.")
    batch_size: int = Field(default=32, ge=1, le=512)
    abstain_threshold: float | None = Field(
        default=None, ge=0, le=1, description="Override the bundle's recommended threshold."
    )
    out_of_scope_threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Override the bundle's out-of-scope threshold (bundles with a "
        "none-of-these output): mail at or above it is left alone as out of scope.",
    )
    timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A batch the model has not classified by then is "
        "left in place, tagged like an abstention (without moving), with the reason recorded.",
    )
    spin_wait: bool = Field(
        default=False,
        description="Let idle inference threads spin (faster back-to-back inference, e.g. a "
        "busy /v1/classify; slower triage cycles on few cores).",
    )


class MemorySettings(_Strict):
    """The correction memory: corrections that decide similar mail at once
    (docs/learning.md)."""

    enabled: bool = Field(
        default=True,
        description="Decide by remembered corrections (needs a bundle with embeddings).",
    )
    scope: Literal["account", "shared"] = Field(
        default="account",
        description="'account': an account's corrections apply to its own mail; 'shared': "
        "every account's corrections apply to every account.",
    )
    max_entries: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Entries kept per account; past it the least recently used go.",
    )
    similarity: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Cosine similarity a message needs to a single correction (default: "
        "the bundle's, chosen on validation data at export).",
    )
    repeated_similarity: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Cosine similarity a message needs to a correction the user made "
        "'support' times of sure decisions (default: the bundle's).",
    )
    support: int | None = Field(
        default=None,
        ge=1,
        description="Same corrections of sure decisions that make a preference (default: "
        "the bundle's).",
    )
    remap_similarity: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Cosine similarity a message needs to a preference that is also "
        "'remap_share' of the sure decisions the model made with that intent: a remap of "
        "the intent (default: the bundle's).",
    )
    remap_share: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Share of the model's sure decisions of an intent the user corrected the "
        "same way that makes a remap (default: the bundle's, 0.5).",
    )


class RetrainSchedule(_Strict):
    """Run ``cleaninbox retrain`` from the daemon on a cron schedule, in a separate low-priority
    process (triage never waits for it). Needs the [train] extra installed."""

    cron: str = Field(description="Crontab expression, e.g. '0 3 * * 0' (Sundays 03:00).")
    config: Path = Field(description="Training config with its retrain section.")
    timeout_hours: float = Field(default=6.0, gt=0, description="Stop a run that takes longer.")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f"not a crontab expression: {exc}") from exc
        return value


class Settings(YamlSettings):
    """Top-level daemon settings."""

    model_config = SettingsConfigDict(
        env_prefix="CLEANINBOX_",
        env_nested_delimiter="__",
        extra="forbid",
        protected_namespaces=(),
    )

    model: Path = Field(default=Path("models/current"), description="Model bundle directory.")
    rules: Path = Field(default=Path("rules.yaml"), description="Rules file.")
    state: Path | str = Field(
        default=Path("var/state.db"),
        description="State: a SQLite file (the default) or a postgresql://host/db URL.",
    )
    state_password_env: str | None = Field(
        default=None, description="PostgreSQL state: env var holding the password."
    )
    state_password_file: Path | None = Field(
        default=None, description="PostgreSQL state: file holding the password."
    )
    replica: str | None = Field(
        default=None,
        description="This replica's name in the lease table (default: host name and pid).",
    )
    lease_ttl: float = Field(
        default=30.0,
        ge=3,
        description="PostgreSQL state: seconds an account's lease lasts unless renewed; "
        "renewed every third of it, taken over by another replica after it expires.",
    )
    workers: int = Field(
        default=8, ge=1, le=256, description="Poll cycles run at once (a bounded pool)."
    )
    accounts_dir: Path | None = Field(
        default=None,
        description="Directory of YAML files with more accounts (one account, or a list, "
        "per file); re-read on SIGHUP.",
    )
    dry_run: bool = Field(default=False, description="Decide and log, change nothing.")
    poll_interval: float = Field(default=60.0, gt=0, description="Default seconds per cycle.")
    jitter: float = Field(
        default=5.0,
        ge=0,
        description="Random delay (up to this many seconds, at most half the interval) "
        "added to each cycle's start; it never accumulates: the period stays the interval.",
    )
    backoff_max: float = Field(
        default=300.0, gt=0, description="Longest wait before retrying a failing account."
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    http: HttpSettings = HttpSettings()
    classifier: ClassifierSettings = ClassifierSettings()
    memory: MemorySettings = MemorySettings()
    accounts: list[Account] = Field(default_factory=list)
    retrain: RetrainSchedule | None = Field(
        default=None, description="Optional: retrain on a schedule from inside the daemon."
    )

    @field_validator("state", mode="before")
    @classmethod
    def _state_location(cls, value: object) -> object:
        return state_location(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _state_password(self) -> Settings:
        if isinstance(self.state, Path) and (self.state_password_env or self.state_password_file):
            raise ValueError("state_password_env/_file apply only to a postgresql:// state")
        if self.state_password_env and self.state_password_file:
            raise ValueError("give at most one of state_password_env or state_password_file")
        return self

    def state_password(self) -> str | None:
        """The PostgreSQL password from its env var or file (None: the URL's or libpq's
        own, e.g. ``PGPASSWORD`` or ``~/.pgpass``)."""
        secret = read_secret("state: password", self.state_password_env, self.state_password_file)
        return None if secret is None else secret.get_secret_value()

    @model_validator(mode="after")
    def _unique_accounts(self) -> Settings:
        seen: set[str] = set()
        for account in self.accounts:
            if account.name in seen:
                raise ValueError(f"account name {account.name!r} is used twice")
            seen.add(account.name)
        return self

    def account(self, name: str) -> Account:
        for account in self.accounts:
            if account.name == name:
                return account
        known = ", ".join(a.name for a in self.accounts) or "none"
        raise ConfigError(f"no account named {name!r} (accounts: {known})")

    def interval(self, account: Account) -> float:
        return account.poll_interval or self.poll_interval


def _resolve_account_paths(account: Account, base: Path) -> None:
    """Relative paths in an account are relative to the file that declared it."""
    holders: list[tuple[object, tuple[str, ...]]] = [
        (account, ("path", "password_file", "ca_file"))
    ]
    if account.oauth2 is not None:
        holders.append((account.oauth2, ("client_secret_file", "refresh_token_file")))
    for holder, fields in holders:
        for field in fields:
            value: Path | None = getattr(holder, field)
            if value is not None and not value.is_absolute():
                setattr(holder, field, base / value)


def load_accounts_dir(directory: Path) -> list[Account]:
    """The accounts in ``directory``'s ``*.yaml``/``*.yml`` files, in file-name order: each
    file holds one account (a mapping) or a list of them. Errors name the file and key."""
    if not directory.is_dir():
        raise ConfigError(f"accounts_dir {directory} is not a directory")
    accounts: list[Account] = []
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))
    for file in files:
        if file.name.startswith("."):
            continue  # editors' and Kubernetes' ConfigMap scratch files
        try:
            raw = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"account file {file} is not valid YAML: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"account file {file} cannot be read: {exc}") from exc
        items = raw if isinstance(raw, list) else [raw] if raw is not None else []
        for index, item in enumerate(items):
            origin = f"account file {file}" + (f" item {index}" if isinstance(raw, list) else "")
            if not isinstance(item, dict):
                raise ConfigError(f"{origin}: an account must be a mapping")
            try:
                account = Account.model_validate(item)
            except ValidationError as exc:
                raise ConfigError(describe_validation_error(exc, origin)) from exc
            _resolve_account_paths(account, file.resolve().parent)
            accounts.append(account)
    return accounts


def load_settings(path: Path | None, overrides: list[str] | None = None) -> Settings:
    """Settings from ``path`` (``cleaninbox.yaml`` if it exists when None) and the
    environment, with the accounts of ``accounts_dir`` after the file's own."""
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    settings = Settings.load(path, overrides, what="settings")
    if path is not None:
        # Relative paths in the file are relative to the file, not to the working directory.
        base = path.resolve().parent
        for field in ("model", "rules", "state", "state_password_file", "accounts_dir"):
            value = getattr(settings, field)
            if isinstance(value, Path) and not value.is_absolute():
                setattr(settings, field, base / value)
        if settings.retrain is not None and not settings.retrain.config.is_absolute():
            settings.retrain.config = base / settings.retrain.config
        for account in settings.accounts:
            _resolve_account_paths(account, base)
    if settings.accounts_dir is not None:
        seen = {a.name for a in settings.accounts}
        for account in load_accounts_dir(settings.accounts_dir):
            if account.name in seen:
                raise ConfigError(
                    f"accounts_dir {settings.accounts_dir}: account name {account.name!r} "
                    "is used twice"
                )
            seen.add(account.name)
            settings.accounts.append(account)
    return settings
