"""structlog set-up, done once by the entry point: JSON lines in production, console locally.

Everything the process logs goes through the same processors and renderer: the service's
own structlog loggers, and the standard library's `logging` (asyncpg, grpc, asyncio,
`warnings`), whose records are turned into structlog events by `ProcessorFormatter` on
the root logger's one handler. So in JSON mode every line is one JSON object, tracebacks
included (rendered into the `exception` field, never as separate lines); a record from
the standard library also names its `logger`. An exception that nothing catches is logged
the same way before the process ends.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import TextIO

import structlog

_ROOT_HANDLER_NAME = "simrating"


def configure_logging(
    log_format: str, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Every logger of the process writes to `stream` (default: standard error)."""
    stream = stream or sys.stderr
    json = log_format == "json"
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    _route_standard_logging(shared, renderer, level, stream)
    if json:
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread


def _route_standard_logging(
    shared: list[structlog.types.Processor],
    renderer: structlog.types.Processor,
    level: int,
    stream: TextIO,
) -> None:
    """The root logger's only handler renders each record with structlog's processors."""
    handler = logging.StreamHandler(stream)
    handler.set_name(_ROOT_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # `warnings` too, as records of the "py.warnings" logger


def _log_uncaught(
    exc_type: type[BaseException],
    exc: BaseException,
    traceback: TracebackType | None,
) -> None:
    structlog.get_logger("main").critical("uncaught exception", exc_info=(exc_type, exc, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    structlog.get_logger("main").critical(
        "uncaught exception in thread",
        thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
