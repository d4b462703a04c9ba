"""What every ``cleaninbox`` command shares: the error handling, the options several
commands take, and loading settings.

Every :class:`~daemon.errors.CleanInboxError` becomes one line on stderr and the error's
exit code (2: bad input, 1: failure at run time). This module stays import-light (click
and the error types) so ``cleaninbox --help`` answers at once; each command imports what
it needs when it runs.
"""

from __future__ import annotations

import sys
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


def error_message(exc: CleanInboxError) -> str:
    """The error as one line (messages may wrap; the user sees a single line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def fail(exc: CleanInboxError) -> NoReturn:
    click.echo(f"cleaninbox: error: {error_message(exc)}", err=True)
    sys.exit(exc.exit_code)


class Group(click.Group):
    """A click group that turns CleanInbox errors into one clear line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CleanInboxError as exc:
            fail(exc)


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


def banking77_dir(data_dir: Path | None) -> Path:
    """``--data-dir``, else ``BANKING77_DIR``, else the project default."""
    import os

    return data_dir or Path(os.environ.get("BANKING77_DIR") or "data/banking77")


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
