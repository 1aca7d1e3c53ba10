"""Test helpers: running servers (in-process and as a child process) and request builders."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc

from rating.v1 import (
    billing_service_pb2_grpc,
    catalog_service_pb2_grpc,
    clock_service_pb2_grpc,
    provisioning_service_pb2_grpc,
    rating_service_pb2_grpc,
)
from rating.v1 import types_pb2 as t
from service.domain.iccid import make_iccid

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Stubs:
    channel: grpc.aio.Channel
    catalog: catalog_service_pb2_grpc.CatalogServiceStub = field(init=False)
    provisioning: provisioning_service_pb2_grpc.ProvisioningServiceStub = field(init=False)
    rating: rating_service_pb2_grpc.RatingServiceStub = field(init=False)
    billing: billing_service_pb2_grpc.BillingServiceStub = field(init=False)
    clock: clock_service_pb2_grpc.ClockServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.catalog = catalog_service_pb2_grpc.CatalogServiceStub(self.channel)
        self.provisioning = provisioning_service_pb2_grpc.ProvisioningServiceStub(self.channel)
        self.rating = rating_service_pb2_grpc.RatingServiceStub(self.channel)
        self.billing = billing_service_pb2_grpc.BillingServiceStub(self.channel)
        self.clock = clock_service_pb2_grpc.ClockServiceStub(self.channel)


async def until(condition: Callable[[], bool]) -> None:
    """Until `condition` holds, for an observable the service offers no event for: sleep(0)
    only yields to the event loop, it never waits for time to pass. At most 10 s."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0)


def iccids(start: int, count: int) -> list[str]:
    return [make_iccid(n) for n in range(start, start + count)]


def data_plan(plan_id: str = "P", currency: str = "EUR", **overrides: object) -> t.Plan:
    """An IMMEDIATE, ALWAYS, DAILY plan: 2.00 a month, data at 0.10 per MiB."""
    plan = t.Plan(
        plan_id=plan_id,
        currency=currency,
        subscription_fee_micros=2_000_000,
        activation=t.Activation(mode=t.ACTIVATION_MODE_IMMEDIATE),
        billing_mode=t.BILLING_MODE_ALWAYS,
        proration=t.PRORATION_DAILY,
        usage_rates=[
            t.UsageRate(
                usage_type=t.USAGE_TYPE_DATA,
                unit_quantity=1_048_576,
                rounding_increment=1_024,
                included_quantity=10_485_760,
                tiers=[t.Tier(up_to_quantity=0, price_micros=100_000)],
            )
        ],
    )
    for name, value in overrides.items():
        setattr(plan, name, value)
    return plan


def first_use_plan(plan_id: str = "FU", grace_days: int = 30, threshold: int = 1_048_576) -> t.Plan:
    plan = data_plan(plan_id)
    plan.activation.mode = t.ACTIVATION_MODE_FIRST_USE
    plan.activation.thresholds.append(
        t.ActivationThreshold(usage_type=t.USAGE_TYPE_DATA, quantity=threshold)
    )
    plan.activation.grace_period.FromSeconds(grace_days * 86400)
    return plan


class ServerProcess:
    """`python -m service` as a child process, for restart and kill -9 tests."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {
            **os.environ,
            "RATING_GRPC_ADDR": "127.0.0.1:0",
            "RATING_METRICS_ADDR": "",
            "RATING_LOG_FORMAT": "json",
            **env,
        }
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.log_lines: list[str] = []

    async def start(self, within: float = 60) -> int:
        self.proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "service"],
            cwd=REPO,
            env=self.env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.port = await asyncio.wait_for(asyncio.to_thread(self._await_serving), within)
        # Keep draining stderr, or the child blocks on a full pipe once it logs enough.
        self._drain = threading.Thread(target=lambda: [None for _ in self._lines()], daemon=True)
        self._drain.start()
        return self.port

    def _await_serving(self) -> int:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self._lines():
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "serving":
                return int(event["grpc_port"])
        raise RuntimeError("server exited before serving:\n" + "".join(self.log_lines))

    def _lines(self) -> Iterator[str]:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log_lines.append(line)
            yield line

    async def stop(self, sig: signal.Signals = signal.SIGTERM, within: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await self.exited(within)

    async def exited(self, within: float = 60) -> int:
        """Until the process ends by itself (or after a signal); its exit status."""
        assert self.proc is not None
        code = await asyncio.wait_for(asyncio.to_thread(self.proc.wait), within)
        await asyncio.to_thread(self._drain.join, within)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code
