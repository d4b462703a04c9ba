"""The ``cleaninbox`` command line: the ``main`` group and the commands it carries.

The commands are grouped by who uses them: :mod:`daemon.cli.model` (making and shipping
models), :mod:`daemon.cli.service` (running the daemon), :mod:`daemon.cli.audit` (looking
back at what it did), :mod:`daemon.cli.state` (the state store itself) and
:mod:`daemon.cli.demo`; :mod:`daemon.cli.common` has what they
share. No error is shown as a traceback unless ``--debug`` (or ``CLEANINBOX_DEBUG=1``)
asks for it: an error from outside the program is one line on stderr and exit status 1
(2: bad input), a bug one "internal error" line asking for a bug report and exit status 70
(:mod:`daemon.cli.common`).
"""

from __future__ import annotations

from typing import Any

import click

import daemon as _package
from daemon.cli import audit, demo, model, service, state
from daemon.cli.common import DEBUG_ENV, Group, fail, set_debug
from daemon.errors import DependencyError

#: The PyPI distribution that installs the same top-level package, ``daemon``.
CLASHING_DISTRIBUTION = "python-daemon"
#: What to do about it, in the error and in README's installation notes.
CLASH_ADVICE = (
    "install CleanInbox in its own virtualenv (python3 -m venv) or run its container image"
)
# Read with a default: where python-daemon's __init__.py has replaced this package's, the
# command line must still load far enough to say so.
__version__: str = getattr(_package, "__version__", "unknown")


def import_name_clash() -> str | None:
    """Why the import name ``daemon`` is not CleanInbox's alone here, or None.

    Installed in one environment, CleanInbox and python-daemon share ``daemon/``: one of
    them runs with the other's ``__init__.py``, and uninstalling either deletes files of
    the other. Checked at every start, so the failure is this one line rather than an
    ImportError in either program later."""
    from importlib import metadata

    if getattr(_package, "__distribution__", None) != "cleaninbox":
        where = getattr(_package, "__file__", None) or "an unknown location"
        return f"the package 'daemon' in {where} is not CleanInbox's"
    try:
        found = metadata.distribution(CLASHING_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    return (
        f"{CLASHING_DISTRIBUTION} {found.version} is installed in this environment and "
        "also uses the import name 'daemon'"
    )


class _Main(Group):
    """The top-level group: checks the import name before parsing anything, so even
    ``--version`` and ``--help`` fail clearly in an environment shared with python-daemon."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        clash = import_name_clash()
        if clash is not None:
            fail(DependencyError(f"{clash}; {CLASH_ADVICE}"))
        return super().make_context(info_name, args, parent, **extra)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cleaninbox")
@click.option(
    "--debug",
    is_flag=True,
    envvar=DEBUG_ENV,
    help=f"Show the full traceback of any error, for a bug report (or {DEBUG_ENV}=1).",
)
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """CleanInbox: classify new mail into banking77 intents and file it by rules."""
    set_debug(ctx, debug)


for _command in (
    model.data,
    model.sweep,
    model.retrain,
    model.train,
    model.evaluate,
    model.classify,
    model.models,
    demo.demo,
    service.run,
    service.once,
    service.auth,
    service.check_config,
    service.backfill,
    audit.history,
    audit.feedback,
    audit.backup,
    audit.undo,
    state.state,
    state.leases,
):
    main.add_command(_command)

__all__ = ["import_name_clash", "main"]

if __name__ == "__main__":  # pragma: no cover
    main()
