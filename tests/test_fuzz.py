"""Fuzzing every rating.v1 RPC through a real channel against one real server per test.

What is sent: for each of the 19 RPCs of the five services (`service.app.SERVICE_NAMES`,
ClockService included, StreamUsage as a stream of random batches), requests drawn by
hypothesis from three kinds of strategies:

- generic: the request descriptor walked field by field (depth-limited), each field set or
  left unset, values biased towards hostile ones: empty, over-long (129 characters) and huge
  (up to 300,000 characters) strings, NUL / DEL / newline, RTL marks, emoji and combining
  characters in every id, period, currency and time zone; int64 and int32 extremes; unknown
  enum numbers (proto3 enums are open: 99, -5, int32 extremes); timestamps at year 1 and
  9999 and with out-of-range seconds or nanos; likewise durations;
- well-formed: valid plans, accounts, provisioning, lifecycle changes, usage batches,
  settlements and small clock advances, built around one plan, account and four SIMs set
  up at the start of the test, so that calls succeed and change state;
- mutated: a well-formed request with one field (anywhere in the tree) replaced by a
  hostile value, so validation of each field is reached past the other checks.
Usage batches also come over the 10,000-record limit and at exactly 10,000 (one record
repeated: one RATED, the rest DUPLICATE). Every RPC is called at least 20 times: hypothesis
favours the first RPCs of the list, so further rounds of the same seed fuzz those it drew
less often.

How hypothesis drives an async server: the app, its database and the channel come from
the usual async fixtures on the session event loop. The hypothesis engine runs in a worker
thread (`asyncio.to_thread`) while the loop keeps serving; each example draws a few calls
with `st.data()` and hands each one to the loop with `run_coroutine_threadsafe`. So
hypothesis sees every call's outcome (a failing call is reported and shrunk like any
hypothesis failure) and the test still ends with checks over the whole run, which a plain
`@given` test (one body per example) could not do.

What is asserted:
- every answer is OK or a documented error code (INVALID_ARGUMENT with a message, NOT_FOUND,
  ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED), never UNKNOWN or INTERNAL, and
  every per-record / per-ICCID status is a defined one; the codes seen are printed per RPC;
- the server stays up: health SERVING and known-good calls still work after the run;
- state changed only by accepted calls, checked against a model fed with the answers:
  ListPlans is exactly the plans PutPlan accepted (same content), GetAccount shows the last
  accepted PutAccount of each account and NOT_FOUND for ids never accepted, GetSimStatus is
  NOT_FOUND for every ICCID never CREATED, and each SIM's period_usage equals the sum of
  the quantities of its records answered RATED in that period (a DUPLICATE counts nothing).
  Records of a stream that failed after they were sent are in doubt (they may be committed
  without an acknowledgement): like a mediation platform, the test sends them again, and a
  DUPLICATE answer for an id not counted yet then means a failed stream had stored it. The
  fuzz reuses ids (`fz-dup-N`) with other contents, so which of the records sent with that
  id was stored is read from PostgreSQL (and must be one of them); that one is counted.

The clock only moves by small steps here: AdvanceTime gets hostile times that must be
refused (year 1, the past, out-of-range seconds or nanos, unset) but no jump to year 9999,
which would make the settlement worker close ninety thousand periods and leave the rest
of the run at the end of time. That jump is not covered yet.

Replaying a failure: every run draws a fresh seed and prints it ("fuzz seed N: replay with
RATING_FUZZ_SEED=N", in the captured output and in the failure's message).

    RATING_FUZZ_SEED=N pytest tests/test_fuzz.py::test_fuzz_every_rpc

reruns that seed: hypothesis's `@seed` draws the same calls, and the server (a fresh
database, the test clock at T0) answers them alike, so the run fails at the same call.
Only timing can differ (which batches share a group commit). A failure is caught outside
hypothesis (see `run_fuzz` in tests/support/fuzz/driver.py), so hypothesis's own replay of one
example (`print_blob`, `@reproduce_failure`) does not apply: a failure here depends on the
state every earlier example left, and the seed replays the whole run.

The parts live in tests/support/fuzz/: `strategies` (what is sent), `model` (the world set up and
the model of the server's state), `driver` (calls from hypothesis' thread, what each answer
teaches the model), `checks` (set-up and the checks over a whole run).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import timedelta

import grpc

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.app import SERVICE_NAMES
from tests.conftest import AppFactory
from tests.support import T0, Stubs
from tests.support.fuzz.checks import (
    check_state,
    check_still_serving,
    check_usage_state,
    code_of,
    known_good_tour,
    report,
    resolve_in_doubt,
    set_up,
)
from tests.support.fuzz.driver import Fuzzer, run_fuzz
from tests.support.fuzz.model import (
    FREE,
    INT64_MAX,
    PROTECTED,
    SETUP_ACCOUNT,
    every_method,
)
from tests.support.fuzz.strategies import build_account, build_plan

SEED_VARIABLE = "RATING_FUZZ_SEED"
MIN_CALLS = 20  # every RPC is fuzzed at least this often


def fuzz_seed() -> int:
    """The seed of this run: RATING_FUZZ_SEED when set (a replay), else a fresh one."""
    chosen = os.environ.get(SEED_VARIABLE, "").strip()
    return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


async def test_fuzz_every_rpc(start_app: AppFactory) -> None:
    fuzz_seed_ = fuzz_seed()
    replay = f"{SEED_VARIABLE}={fuzz_seed_}"
    print(f"fuzz seed {fuzz_seed_}: replay with {replay}")
    try:
        await fuzz_every_rpc(start_app, fuzz_seed_)
    except AssertionError as exc:
        exc.add_note(f"fuzz seed {fuzz_seed_}: replay with {replay}")
        raise


async def fuzz_every_rpc(start_app: AppFactory, fuzz_seed: int) -> None:
    methods = every_method()
    assert len(methods) == 19
    app, stubs = await start_app()
    fuzzer = Fuzzer(asyncio.get_running_loop(), stubs.channel)
    await set_up(fuzzer)
    started = time.perf_counter()
    try:
        await asyncio.to_thread(run_fuzz, fuzzer, methods, 250, fuzz_seed)
        # Hypothesis favours the first values of a sampled_from (it is what it shrinks
        # towards): PutPlan, first in the list, gets about a fifth of the calls, and an RPC
        # late in the list now and then fewer than MIN_CALLS. Those are fuzzed again, on
        # their own, in further rounds of the same seed, until each has had MIN_CALLS.
        for round_number in range(1, 6):
            short = [m for m in methods if fuzzer.model.codes[m.name].total() < MIN_CALLS]
            if not short:
                break
            await asyncio.to_thread(run_fuzz, fuzzer, short, 50, f"{fuzz_seed}-{round_number}")
    finally:
        report(fuzzer.model, fuzzer.calls, time.perf_counter() - started)
    await known_good_tour(fuzzer)
    await resolve_in_doubt(fuzzer, app)
    for method in methods:
        assert fuzzer.model.codes[method.name].total() >= MIN_CALLS, method.name
    await check_state(fuzzer, stubs)
    await check_usage_state(app)
    await check_still_serving(stubs, fuzzer.model)
    handled = app.metrics.registry.get_sample_value
    for method in methods:
        service = method.containing_service.full_name
        grpc_type = "bidi_stream" if method.client_streaming else "unary"
        for code in ("INTERNAL", "UNKNOWN"):
            labels = {
                "grpc_type": grpc_type,
                "grpc_service": service,
                "grpc_method": method.name,
                "grpc_code": code,
            }
            assert handled("grpc_server_handled_total", labels) is None, (method.name, code)
    ok = {"grpc_type": "unary", "grpc_service": SERVICE_NAMES[0], "grpc_method": "ListPlans"}
    assert handled("grpc_server_handled_total", {**ok, "grpc_code": "OK"})  # labels are right


# --- regressions: bugs the fuzz found -----------------------------------------------------------


async def test_estimate_beyond_int64_saturates(start_app: AppFactory) -> None:
    """Found by the fuzz: an estimate beyond int64 (2**62 SMS at 0.10 each) failed the answer
    INTERNAL; for RateUsage that was after the record had been committed and counted."""
    _, stubs = await start_app()
    fuzzer = Fuzzer(asyncio.get_running_loop(), stubs.channel)
    await set_up(fuzzer)
    answer = await stubs.rating.AuthorizeSession(
        r.AuthorizeSessionRequest(
            iccid=PROTECTED[0], usage_type=t.USAGE_TYPE_SMS, requested_quantity=2**62
        )
    )
    assert answer.allowed and answer.estimated_charge_micros == INT64_MAX
    dear = build_plan("dear", "EUR", 0, False, False, False)
    dear.usage_rates[0].usage_type = t.USAGE_TYPE_SMS
    dear.usage_rates[0].unit_quantity = dear.usage_rates[0].rounding_increment = 1
    dear.usage_rates[0].included_quantity = 0
    dear.usage_rates[0].tiers[0].price_micros = INT64_MAX
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=dear))
    iccid = FREE[0]
    await stubs.provisioning.ProvisionSims(
        p.ProvisionSimsRequest(account_id=SETUP_ACCOUNT, plan_id="dear", iccids=[iccid])
    )
    record = t.UsageRecord(record_id="dear", iccid=iccid, usage_type=t.USAGE_TYPE_SMS, quantity=2)
    record.event_time.FromDatetime(T0)
    results = (await stubs.rating.RateUsage(r.RateUsageRequest(records=[record]))).results
    assert [x.status for x in results] == [t.RECORD_STATUS_RATED]
    assert results[0].estimated_charge_micros == INT64_MAX


async def test_int64_quantities_are_invalid_records(start_app: AppFactory) -> None:
    """Found by the fuzz: two records of 2**63-1 bytes were RATED, after which the SIM's
    period usage (their sum) no longer fit in int64: every SimStatus answer (GetSimStatus,
    Suspend/Resume/TerminateSim) and the bill preview failed INTERNAL."""
    _, stubs = await start_app()
    fuzzer = Fuzzer(asyncio.get_running_loop(), stubs.channel)
    await set_up(fuzzer)
    records = []
    for n, quantity in enumerate((INT64_MAX, INT64_MAX, 10**12 + 1, 10**12)):
        record = t.UsageRecord(
            record_id=f"big-{n}",
            iccid=PROTECTED[0],
            usage_type=t.USAGE_TYPE_DATA,
            quantity=quantity,
        )
        record.event_time.FromDatetime(T0)
        records.append(record)
    results = (await stubs.rating.RateUsage(r.RateUsageRequest(records=records))).results
    assert [x.status for x in results] == [t.RECORD_STATUS_INVALID] * 3 + [t.RECORD_STATUS_RATED]
    assert all(x.detail.startswith("quantity:") for x in results[:3])
    status = (await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=PROTECTED[0]))).status
    assert [(u.usage_type, u.quantity) for u in status.period_usage] == [(1, 10**12)]
    from rating.v1 import billing_service_pb2 as b

    await stubs.billing.GetBillPreview(b.GetBillPreviewRequest(account_id=SETUP_ACCOUNT))


async def test_error_quoting_a_huge_id_keeps_its_code(stubs: Stubs) -> None:
    """Found by the fuzz: NOT_FOUND for a 300,000-character id quoted the id in full; the
    status message overflowed the client's metadata limit and arrived as RESOURCE_EXHAUSTED."""
    huge = "\u202e" * 300_000
    for call in (
        stubs.catalog.GetAccount(c.GetAccountRequest(account_id=huge)),
        stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=huge)),
    ):
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            assert len(exc.details() or "") < 1_000
        else:
            raise AssertionError("found an account or SIM that does not exist")


async def test_a_bill_beyond_int64_is_a_failed_precondition(start_app: AppFactory) -> None:
    """Found by the fuzz: two SIMs on a plan whose fee is the int64 maximum made a bill whose
    total no longer fits in int64; GetBillPreview failed INTERNAL."""
    from rating.v1 import billing_service_pb2 as b

    app, stubs = await start_app()
    fuzzer = Fuzzer(asyncio.get_running_loop(), stubs.channel)
    await set_up(fuzzer)
    dear = build_plan("dear", "EUR", INT64_MAX, False, False, False)
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=dear))
    provision = p.ProvisionSimsRequest(account_id=SETUP_ACCOUNT, plan_id="dear", iccids=FREE[:2])
    provision.provisioned_at.FromDatetime(T0 - timedelta(days=40))
    await stubs.provisioning.ProvisionSims(provision)
    for call in (
        stubs.billing.GetBillPreview(b.GetBillPreviewRequest(account_id=SETUP_ACCOUNT)),
        stubs.billing.SettlePeriod(
            b.SettlePeriodRequest(account_id=SETUP_ACCOUNT, period="2025-12")
        ),
    ):
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            assert "beyond the int64 range" in (exc.details() or "")
        else:
            raise AssertionError("a bill beyond int64 was answered")
    metric = app.metrics.registry.get_sample_value
    assert metric("rating_settlements_total", {"result": "failed"}) == 1
    code = await code_of(
        stubs.billing.GetInvoice(b.GetInvoiceRequest(account_id=SETUP_ACCOUNT, period="2025-12"))
    )
    assert code == grpc.StatusCode.NOT_FOUND  # nothing was settled
    # The other account's bills are untouched.
    await stubs.catalog.PutAccount(
        c.PutAccountRequest(account=build_account("fz-a1", "EUR", "UTC", 1, None))
    )
    await stubs.billing.GetBillPreview(b.GetBillPreviewRequest(account_id="fz-a1"))
