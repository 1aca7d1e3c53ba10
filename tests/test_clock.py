"""ClockService: only on a test clock, monotonic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from rating.v1 import clock_service_pb2 as k
from tests.conftest import AppFactory
from tests.support import T0, Stubs


async def test_time_moves_forward_only(stubs: Stubs) -> None:
    now = await stubs.clock.GetTime(k.GetTimeRequest())
    assert now.now.ToDatetime() == T0.replace(tzinfo=None)
    later = k.AdvanceTimeRequest()
    later.to.FromDatetime(T0 + timedelta(days=3))
    moved = await stubs.clock.AdvanceTime(later)
    assert moved.now.ToDatetime() == (T0 + timedelta(days=3)).replace(tzinfo=None)
    back = k.AdvanceTimeRequest()
    back.to.FromDatetime(T0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.clock.AdvanceTime(back)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "to" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.clock.AdvanceTime(k.AdvanceTimeRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    far = k.AdvanceTimeRequest()
    far.to.FromDatetime(datetime(9999, 12, 31, tzinfo=UTC))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.clock.AdvanceTime(far)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "3000-01-01" in (err.value.details() or "")


async def test_clock_service_refuses_on_the_system_clock(start_app: AppFactory) -> None:
    _, stubs = await start_app(test_clock=False, clock_start=None)
    later = k.AdvanceTimeRequest()
    later.to.FromDatetime(T0)
    for call in (stubs.clock.GetTime(k.GetTimeRequest()), stubs.clock.AdvanceTime(later)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "RATING_CLOCK=test" in (err.value.details() or "")
