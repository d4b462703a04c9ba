"""What every ``cleaninbox`` command shares: the error handling, the options several
commands take, and loading settings.

No error reaches the user as a traceback unless asked for (``--debug``): an error from
outside the program (a :class:`~daemon.errors.CleanInboxError`, a server's, the network's,
the OS's, the database's) becomes one line on stderr and exit status 1 (2: bad input); a
bug becomes one "internal error" line, a request for a bug report and exit status 70.
Commands that work account by account report each failing account on its own line and
carry on with the others (:class:`AccountFailures`). This module stays import-light (click
and the error types) so ``cleaninbox --help`` answers at once; each command imports what
it needs when it runs.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from daemon.errors import CleanInboxError, DependencyError

if TYPE_CHECKING:
    from daemon.config.settings import Account, Settings
    from daemon.service.supervisor import Service

DEFAULT_MODELS_DIR = Path("models")
BANKING77_HELP = "banking77 CSV directory (default: $BANKING77_DIR or data/banking77)."
F = TypeVar("F", bound=Callable[..., object])


# --- errors -------------------------------------------------------------------------------

#: Exit status of a bug in CleanInbox (sysexits.h EX_SOFTWARE), apart from 1 (a failure at
#: run time) and 2 (bad input), so a scheduler or a script can tell them apart.
EX_SOFTWARE = 70
#: Exit status after Ctrl-C: 128 + SIGINT, what a shell reports for a program it killed.
EX_INTERRUPTED = 130
#: Set to 1 (like ``cleaninbox --debug``) to see the traceback of every error.
DEBUG_ENV = "CLEANINBOX_DEBUG"
_DEBUG_META = "cleaninbox.debug"
BUG_REPORT = (
    "cleaninbox: this is a bug in CleanInbox; please report it with the output of the "
    "same command run with --debug (cleaninbox --debug COMMAND ...)"
)
BUG_REPORT_DEBUG = "cleaninbox: this is a bug in CleanInbox; please report it with this output"

# Exception types from outside the program, by (module, attribute): the server, the network,
# the database, the files. Looked up in sys.modules only: an exception of a library's type
# exists only once that library is imported, and this module must not import them (it is
# on the path of ``cleaninbox --help``).
_OUTSIDE = (
    ("imaplib", "IMAP4.error"),  # imapclient's exceptions are its subclasses
    ("sqlalchemy.exc", "DBAPIError"),
    ("sqlalchemy.exc", "DisconnectionError"),
    ("sqlalchemy.exc", "TimeoutError"),  # no pool connection in time
    ("sqlite3", "Error"),
    ("psycopg", "Error"),
    ("httpx", "TransportError"),  # an OAuth2 token endpoint out of reach
)
# ... except these driver errors, which say the program sent wrong SQL or wrong data.
_BUGS = tuple(
    (module, name)
    for module in ("sqlalchemy.exc", "sqlite3", "psycopg")
    for name in ("ProgrammingError", "IntegrityError", "DataError", "NotSupportedError")
)


def _loaded_types(specs: tuple[tuple[str, str], ...]) -> tuple[type[BaseException], ...]:
    """The exception types of ``specs`` whose modules are imported."""
    found: list[type[BaseException]] = []
    for module_name, path in specs:
        value: object = sys.modules.get(module_name)
        for part in path.split("."):
            value = getattr(value, part, None)
        if isinstance(value, type) and issubclass(value, BaseException):
            found.append(value)
    return tuple(found)


def is_outside(exc: BaseException) -> bool:
    """Whether ``exc`` comes from outside the program (a server, the network, the OS, a
    database, input data, or a :class:`~daemon.errors.CleanInboxError` that says so),
    rather than from a bug in it: only a bug deserves a traceback and a bug report."""
    if isinstance(exc, CleanInboxError | OSError | EOFError | UnicodeDecodeError):
        return True
    return isinstance(exc, _loaded_types(_OUTSIDE)) and not isinstance(exc, _loaded_types(_BUGS))


def exit_status(exc: BaseException) -> int:
    """The exit status ``exc`` ends a command with: the error's own for CleanInbox errors
    (2: bad input, 1: failure at run time), 1 for other errors from outside, 70 for bugs."""
    if isinstance(exc, CleanInboxError):
        return exc.exit_code
    return 1 if is_outside(exc) else EX_SOFTWARE


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def error_message(exc: BaseException) -> str:
    """The error as one line: a CleanInbox error's own message (it names what failed); for
    any other, its type and the words of whoever raised it (a database driver's, not
    SQLAlchemy's wrapping with the statement)."""
    if isinstance(exc, CleanInboxError):
        text = str(exc)
    else:
        driver = getattr(exc, "orig", None)
        words = str(driver if isinstance(driver, BaseException) else exc)
        text = f"{_type_name(exc)}: {words}" if words.strip() else _type_name(exc)
    return " ".join(text.split()) or _type_name(exc)


def debug_enabled(ctx: click.Context | None = None) -> bool:
    """``cleaninbox --debug`` (or ``CLEANINBOX_DEBUG=1``): show tracebacks."""
    ctx = ctx or click.get_current_context(silent=True)
    if ctx is not None and _DEBUG_META in ctx.meta:
        return bool(ctx.meta[_DEBUG_META])
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def set_debug(ctx: click.Context, debug: bool) -> None:
    """Remember ``--debug`` for every command under ``ctx`` (``meta`` is shared)."""
    ctx.meta[_DEBUG_META] = debug


def report_error(
    exc: BaseException,
    *,
    account: str | None = None,
    ctx: click.Context | None = None,
    ask: bool = True,
    note: str | None = None,
) -> int:
    """Say what went wrong in one line on stderr (after its traceback under ``--debug``) and
    return the exit status it calls for. A bug is an "internal error", followed, when
    ``ask``, by a line asking for a bug report; everything else is an "error"."""
    if debug_enabled(ctx):
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
    status = exit_status(exc)
    message = _for_account(account, error_message(exc))
    if note:
        message = f"{message} ({note})"
    kind = "internal error" if status == EX_SOFTWARE else "error"
    click.echo(f"cleaninbox: {kind}: {message}", err=True)
    if status == EX_SOFTWARE and ask:
        ask_for_bug_report(ctx)
    return status


def _for_account(account: str | None, message: str) -> str:
    """``message`` naming ``account`` once (the mailbox's errors already start with it)."""
    if account is None or message.startswith(f"account {account}:"):
        return message
    return f"account {account}: {message}"


def ask_for_bug_report(ctx: click.Context | None = None) -> None:
    """Once per command, after its internal error line(s): how to report the bug."""
    click.echo(BUG_REPORT_DEBUG if debug_enabled(ctx) else BUG_REPORT, err=True)


def fail(exc: CleanInboxError) -> NoReturn:
    sys.exit(report_error(exc))


class Group(click.Group):
    """A click group that ends every error in one clear line and an exit status (see
    :func:`report_error`); click's own exits and usage errors, ``sys.exit`` and Ctrl-C
    keep their meaning."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt as exc:
            if debug_enabled(ctx):
                click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
            click.echo("cleaninbox: interrupted", err=True)
            sys.exit(EX_INTERRUPTED)
        except Exception as exc:
            sys.exit(report_error(exc, ctx=ctx))


class AccountFailures:
    """The failing accounts of a command that works account by account (``once``,
    ``backfill``, ``check-config --connect``, ``undo``): each gets one line on stderr as it
    fails while the others still run, and the command ends with the worst exit status."""

    def __init__(self, status: int | None = None) -> None:
        #: The exit status of any failure that is not a bug (check-config: 2, bad
        #: settings); None: each error's own (:func:`exit_status`).
        self.status = status
        self.statuses: list[int] = []

    def caught(self, account: str, exc: Exception, note: str | None = None) -> str:
        """Report ``exc`` as ``account``'s failure; its one-line message, for a summary."""
        status = report_error(exc, account=account, ask=False, note=note)
        self.statuses.append(status if status == EX_SOFTWARE else self.status or status)
        return error_message(exc)

    def said(self, account: str, message: str, status: int = 1) -> None:
        """Report a failure that came back as a result (a summary's error, a refused login)."""
        click.echo(f"cleaninbox: error: {_for_account(account, message)}", err=True)
        self.statuses.append(self.status or status)

    def exit(self, at_least: int = 0) -> None:
        """Exit with the worst status (a bug's first, after asking for a bug report), at
        least ``at_least``; return only when nothing failed."""
        if EX_SOFTWARE in self.statuses:
            ask_for_bug_report()
            sys.exit(EX_SOFTWARE)
        status = max([at_least, *self.statuses])
        if status:
            sys.exit(status)


def echo_err(line: str) -> None:
    """Progress and log lines go to stderr, so stdout carries only the command's result."""
    click.echo(line, err=True)


def require_training() -> None:
    """Fail clearly when the [train] extra is missing, before any heavy import."""
    import importlib.util

    for name in ("torch", "transformers", "sklearn", "onnx", "matplotlib"):
        if importlib.util.find_spec(name) is None:
            raise DependencyError(
                f"this command needs the training extra ({name} is missing): "
                "pip install 'cleaninbox[train]'"
            )


#: The copy of banking77 in the repository (CC BY 4.0, data/banking77/README.md).
PROJECT_BANKING77 = Path(__file__).resolve().parents[2] / "data" / "banking77"


def banking77_dir(data_dir: Path | None) -> Path:
    """``--data-dir``, else ``BANKING77_DIR``, else ``data/banking77`` under the current
    directory, else the repository's own copy (a command run from outside the checkout)."""
    import os

    chosen = data_dir or os.environ.get("BANKING77_DIR")
    if chosen:
        return Path(chosen)
    local = Path("data/banking77")
    return local if local.exists() or not PROJECT_BANKING77.exists() else PROJECT_BANKING77


# --- settings and the service -------------------------------------------------------------


def load_settings(config_path: Path | None, overrides: tuple[str, ...]) -> Settings:
    """Settings from ``--config`` and ``--set``, with logging configured from them."""
    from daemon.config.settings import load_settings as load
    from daemon.logs import configure_logging

    settings = load(config_path, list(overrides))
    configure_logging(settings.log_format, settings.log_level)
    return settings


def open_service(
    settings: Settings,
    dry_run: bool,
    reload_accounts: Callable[[], list[Account]] | None = None,
) -> Service:
    """The service as the daemon runs it, with the fault-injection write hook installed;
    ``reload_accounts`` re-reads the accounts on SIGHUP."""
    from daemon.service.faults import install_write_hook
    from daemon.service.supervisor import Service

    install_write_hook()
    return Service(settings, dry_run=dry_run or settings.dry_run, reload_accounts=reload_accounts)


# --- options ------------------------------------------------------------------------------


def path_option(*names: str, **kwargs: Any) -> Callable[[F], F]:
    """An option whose value is a :class:`~pathlib.Path` (existence is checked later, by
    the code that reads it, so the error names what the file was for)."""
    return click.option(*names, type=click.Path(path_type=Path), **kwargs)


def config_options(func: F) -> F:
    """``--config`` (the daemon's settings) and ``--set KEY=VALUE`` overrides."""
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a setting, e.g. --set dry_run=true (repeatable).",
    )(func)
    return path_option(
        "--config",
        "config_path",
        default=None,
        help="Settings YAML (default: ./cleaninbox.yaml if present).",
    )(func)


def config_file_option(help: str) -> Callable[[F], F]:
    """The required ``--config`` of the training commands (a training or sweep YAML)."""
    return path_option("--config", "config_path", required=True, help=help)


def overrides_option(help: str | None = None) -> Callable[[F], F]:
    """``--set KEY=VALUE``, repeatable, overriding a key of the YAML config."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=help)


def models_dir_option(
    default: Path | None = DEFAULT_MODELS_DIR, help: str | None = None
) -> Callable[[F], F]:
    """``--models-dir``: the model registry (bundles and ``current``)."""
    return path_option("--models-dir", default=default, show_default=default is not None, help=help)


def model_option(func: F) -> F:
    """``--model``: the bundle to use (default: the one in service)."""
    return path_option(
        "--model", "model_dir", default=DEFAULT_MODELS_DIR / "current", show_default=True
    )(func)


def data_dir_option(func: F) -> F:
    """``--data-dir``: banking77 as CSV files."""
    return path_option("--data-dir", default=None, help=BANKING77_HELP)(func)


def dry_run_option(help: str = "Decide and log; change nothing.") -> Callable[[F], F]:
    return click.option("--dry-run", is_flag=True, help=help)


def json_option(help: str = "One JSON object a line.") -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help)


def limit_option(help: str | None = None) -> Callable[[F], F]:
    return click.option("--limit", type=click.IntRange(1), default=None, help=help)
