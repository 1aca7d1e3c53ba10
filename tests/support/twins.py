"""Two services fed the same calls: a reference that never restarts and a subject that is
stopped (SIGTERM) or killed (SIGKILL) and started again on its database; every answer of
one must equal the other's (tests/test_restart_equivalence.py).

Both are real `python -m service` processes on the test clock, each on its own database
cloned from the migrated template. The subject checkpoints every few milliseconds, so a
kill lands before, during or after a checkpoint; the reference checkpoints at the default
interval (a run without restarts is not changed by when it checkpoints).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc

from tests.support import ServerProcess, Stubs

# The subject's checkpoint interval: a kill at a random instant often meets one.
SUBJECT_CHECKPOINT_S = "0.02"
CALL_TIMEOUT = 60.0


@dataclass(frozen=True)
class Answer:
    """What a caller sees of one call: the status code, its details and the response."""

    code: grpc.StatusCode
    details: str
    response: Any

    def __str__(self) -> str:
        if self.code is not grpc.StatusCode.OK:
            return f"{self.code.name}: {self.details}"
        return f"OK {type(self.response).__name__}({self.response})"


async def answer_of(call: Awaitable[Any]) -> Answer:
    try:
        return Answer(grpc.StatusCode.OK, "", await call)
    except grpc.aio.AioRpcError as err:
        return Answer(err.code(), err.details() or "", None)


@dataclass
class Service:
    """One `python -m service` on its own database, restartable."""

    database_url: str
    checkpoint_interval_s: str
    process: ServerProcess | None = None
    channel: grpc.aio.Channel | None = None
    stubs: Stubs | None = None
    starts: int = 0
    log: list[str] = field(default_factory=list)

    async def start(self, clock: datetime) -> None:
        self.process = ServerProcess(
            {
                "RATING_DATABASE_URL": self.database_url,
                "RATING_CLOCK": f"test:{clock.isoformat()}",
                "RATING_CHECKPOINT_INTERVAL_S": self.checkpoint_interval_s,
            }
        )
        port = await self.process.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stubs = Stubs(self.channel)
        self.starts += 1

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Stop the process with `sig`, then close the channel."""
        code = await self.signal(sig)
        await self.close()
        return code

    async def signal(self, sig: signal.Signals) -> int:
        """Send `sig` and wait for the process to end; the channel stays open, so calls in
        flight end as their connection does (UNAVAILABLE), not cancelled by a close."""
        assert self.process is not None and self.process.proc is not None
        if self.channel is None:  # it never served: nothing to stop gracefully
            self.process.proc.kill()
            return await asyncio.to_thread(self.process.proc.wait)
        return await self.process.stop(sig)

    async def close(self) -> None:
        assert self.process is not None
        if self.channel is not None:
            await self.channel.close()
        self.log.extend(self.process.log_lines)
        self.process = self.channel = self.stubs = None

    def call(self, service: str, method: str, request: Any) -> Awaitable[Any]:
        assert self.stubs is not None, "the service is not running"
        stub = getattr(self.stubs, service)
        return getattr(stub, method)(request, timeout=CALL_TIMEOUT)  # type: ignore[no-any-return]


class Twins:
    """A reference and a subject service, fed alike."""

    def __init__(self, reference: Service, subject: Service) -> None:
        self.reference = reference
        self.subject = subject

    async def start(self, clock: datetime) -> None:
        await asyncio.gather(self.reference.start(clock), self.subject.start(clock))

    async def stop(self) -> None:
        for service in (self.reference, self.subject):
            if service.process is not None:
                await service.stop()

    async def call(self, service: str, method: str, request: Any) -> tuple[Answer, Answer]:
        """The same call to both, one after the other (never concurrently: the reference's
        answer is the one a run without restarts gives)."""
        reference = await answer_of(self.reference.call(service, method, request))
        subject = await answer_of(self.subject.call(service, method, request))
        return reference, subject

    async def same(self, service: str, method: str, request: Any) -> Answer:
        """The call to both; AssertionError unless both answer alike. The answer."""
        reference, subject = await self.call(service, method, request)
        assert_same(f"{service}.{method}({_brief(request)})", reference, subject)
        return reference

    async def restart_subject(
        self, clock: datetime, sig: signal.Signals, before: Callable[[], Awaitable[None]]
    ) -> None:
        """Stop the subject with `sig` once `before` returns, and start it again."""
        await before()
        await self.subject.stop(sig)
        await self.subject.start(clock)


def assert_same(what: str, reference: Answer, subject: Answer) -> None:
    if reference != subject:
        raise AssertionError(
            f"{what} answered differently after a restart:\n"
            f"  without restarts: {reference}\n  with restarts:    {subject}"
        )


def _brief(request: Any) -> str:
    text = str(request).replace("\n", " ")
    return text if len(text) <= 200 else text[:200] + "..."
