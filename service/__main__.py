"""Entry point: `python -m service` (or `simrating serve`). Reads the environment and flags,
configures logging, installs signal handlers and runs the service until SIGTERM/SIGINT
(exit status 0) or until a worker crashes (exit status 70, EX_SOFTWARE)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

import structlog

from service.app import Application
from service.domain.errors import InvalidArgument
from service.ops.logs import configure_logging
from service.ops.runtime import tune_gc
from service.ops.settings import Settings


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT or a worker crash; the process exit status."""
    app = Application(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, app.request_stop)
    try:
        await app.start()
        await app.wait()
    finally:
        await app.stop()
    return app.exit_status


def main(argv: Sequence[str] | None = None, prog: str = "simrating") -> None:
    """`python -m service`, `simrating serve`: flags from `argv` (default: sys.argv)."""
    try:
        settings = Settings.from_environment(argv=argv, prog=prog)
    except InvalidArgument as exc:
        sys.exit(f"simrating: bad setting {exc}")
    configure_logging(settings.log_format)
    tune_gc()
    structlog.get_logger("main").info("starting", grpc_addr=settings.grpc_addr)
    try:
        status = asyncio.run(serve(settings))
    except InvalidArgument as exc:  # a bad keys file, certificate path, ...
        sys.exit(f"simrating: bad setting {exc}")
    sys.exit(status)  # 0, or EXIT_WORKER_CRASHED (70) when a worker crashed


if __name__ == "__main__":
    main()
