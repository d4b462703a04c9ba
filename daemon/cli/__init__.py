"""The ``cleaninbox`` command line: the ``main`` group and the commands it carries.

The commands are grouped by who uses them: :mod:`daemon.cli.model` (making and shipping
models), :mod:`daemon.cli.service` (running the daemon), :mod:`daemon.cli.audit` (looking
back at what it did), :mod:`daemon.cli.state` (the state store itself) and
:mod:`daemon.cli.demo`; :mod:`daemon.cli.common` has what they
share. Every :class:`~daemon.errors.CleanInboxError` becomes one line on stderr and the
error's exit code (2: bad input, 1: failure at run time).
"""

from __future__ import annotations

import click

from daemon import __version__
from daemon.cli import audit, demo, model, service, state
from daemon.cli.common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cleaninbox")
def main() -> None:
    """CleanInbox: classify new mail into banking77 intents and file it by rules."""


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

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    main()
