"""structlog configuration: key-value events, JSON when stderr is not a terminal.

Every event names its logger (the module that logged it: ``structlog.get_logger(__name__)``)
and carries the context bound with ``structlog.contextvars`` (the account and folder a
cycle works on are bound once, by the cycle).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _NamedPrintLogger(structlog.PrintLogger):
    """A print logger that knows the name it was asked for (``add_logger_name`` reads it)."""

    def __init__(self, name: str) -> None:
        super().__init__(file=sys.stderr)
        self.name = name


def _logger_factory(*args: object) -> _NamedPrintLogger:
    return _NamedPrintLogger(str(args[0]) if args else "cleaninbox")


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "info"
) -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # APScheduler warns at every tick a long cycle overlaps ("maximum number of running
    # instances reached"): expected with one instance per account, so only errors show.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
