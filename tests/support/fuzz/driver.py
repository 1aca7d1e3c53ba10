"""Calling the server from hypothesis' thread and feeding the model with each answer (see
tests/test_fuzz.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import clock_service_pb2 as k
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from tests.support.fuzz.model import (
    CALL_TIMEOUT,
    CLIENT_WRITE_RACE,
    DEFINED_CODES,
    MESSAGE_LIMIT,
    PROVISION_STATUSES,
    RECORD_STATUSES,
    Model,
)
from tests.support.fuzz.strategies import request_strategy

# --- calling the server from hypothesis' thread and feeding the model --------------------------


@dataclasses.dataclass
class Answer:
    code: grpc.StatusCode
    details: str
    responses: list[Any]


class Fuzzer:
    def __init__(self, loop: asyncio.AbstractEventLoop, channel: grpc.aio.Channel) -> None:
        self.loop = loop
        self.channel = channel
        self.model = Model()
        self.calls = 0
        self.failure: str | None = None

    async def call(self, method: MethodDescriptor, request: Any) -> Answer:
        path = f"/{method.containing_service.full_name}/{method.name}"
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        responses: list[Any] = []
        try:
            if method.client_streaming:
                stream = self.channel.stream_stream(
                    path,
                    request_serializer=request_type.SerializeToString,
                    response_deserializer=response_type.FromString,
                )
                async for response in stream(iter(request), timeout=CALL_TIMEOUT):
                    responses.append(response)
            else:
                unary = self.channel.unary_unary(
                    path,
                    request_serializer=request_type.SerializeToString,
                    response_deserializer=response_type.FromString,
                )
                responses.append(await unary(request, timeout=CALL_TIMEOUT))
        except grpc.aio.AioRpcError as exc:
            return Answer(exc.code(), exc.details() or "", responses)
        return Answer(grpc.StatusCode.OK, "", responses)

    def call_from_thread(self, method: MethodDescriptor, request: Any) -> Answer:
        future = asyncio.run_coroutine_threadsafe(self.call(method, request), self.loop)
        try:
            return future.result(CALL_TIMEOUT + 10)
        except FutureTimeout:
            future.cancel()
            raise AssertionError(f"{method.name} hung: the server stopped answering") from None

    def check(self, method: MethodDescriptor, request: Any, answer: Answer) -> None:
        """Record the answer in the model, then assert it is a defined one."""
        self.calls += 1
        learn = getattr(self, f"_learn_{method.name}", None)
        if learn is not None:
            learn(request, answer)
        if method.client_streaming and answer.details == CLIENT_WRITE_RACE:
            # The server answered (its own code is checked in its metrics at the end), but
            # the client was still writing when the server ended the stream.
            self.model.codes[method.name]["INTERNAL (client write race)"] += 1
            return
        self.model.codes[method.name][answer.code.name] += 1
        assert answer.code in DEFINED_CODES, (method.name, answer.code, answer.details, request)
        if answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            messages = request if method.client_streaming else [request]
            assert max(m.ByteSize() for m in messages) > MESSAGE_LIMIT, (method.name, answer)
        if answer.code == grpc.StatusCode.INVALID_ARGUMENT:
            assert answer.details, (method.name, "INVALID_ARGUMENT without a message")

    # Each _learn_* feeds the model with what an answer says changed, and checks the answer
    # agrees with what the model knew before.

    def _learn_PutPlan(self, request: c.PutPlanRequest, answer: Answer) -> None:
        plan_id = request.plan.plan_id
        known = self.model.plans.get(plan_id)
        if answer.code == grpc.StatusCode.OK:
            response = answer.responses[0]
            assert response.created == (known is None), plan_id
            assert response.plan.plan_id == plan_id
            if known is None:
                self.model.plans[plan_id] = response.plan
            else:
                assert response.plan == known, "an idempotent PutPlan changed the plan"
        elif answer.code == grpc.StatusCode.ALREADY_EXISTS:
            assert known is not None, f"ALREADY_EXISTS for unknown plan {plan_id!r}"

    def _learn_PutAccount(self, request: c.PutAccountRequest, answer: Answer) -> None:
        account_id = request.account.account_id
        self.model.asked_accounts.add(account_id)
        if answer.code == grpc.StatusCode.OK:
            response = answer.responses[0]
            assert response.created == (account_id not in self.model.accounts)
            assert response.account.account_id == account_id
            self.model.accounts[account_id] = response.account

    def _learn_GetAccount(self, request: c.GetAccountRequest, answer: Answer) -> None:
        self.model.asked_accounts.add(request.account_id)

    def _learn_ProvisionSims(self, request: p.ProvisionSimsRequest, answer: Answer) -> None:
        self.model.asked_iccids.update(request.iccids)
        if answer.code != grpc.StatusCode.OK:
            return
        results = answer.responses[0].results
        assert [x.iccid for x in results] == list(request.iccids)
        owner = (request.account_id, request.plan_id)
        for result in results:
            assert result.status in PROVISION_STATUSES, result
            if result.status == p.PROVISION_STATUS_CREATED:
                assert result.iccid not in self.model.sims, result.iccid
                self.model.sims[result.iccid] = owner
            elif result.status == p.PROVISION_STATUS_ALREADY_PROVISIONED:
                assert self.model.sims.get(result.iccid) == owner, result.iccid

    def _learn_iccid(self, request: Any, answer: Answer) -> None:
        self.model.asked_iccids.add(request.iccid)
        if answer.code == grpc.StatusCode.OK and request.iccid not in self.model.sims:
            raise AssertionError(f"found a SIM never CREATED: {request.iccid!r}")

    _learn_SuspendSim = _learn_ResumeSim = _learn_TerminateSim = _learn_iccid
    _learn_GetSimStatus = _learn_iccid

    def _learn_AuthorizeSession(self, request: r.AuthorizeSessionRequest, answer: Answer) -> None:
        self.model.asked_iccids.add(request.iccid)
        if answer.code == grpc.StatusCode.OK and request.iccid not in self.model.sims:
            response = answer.responses[0]
            assert not response.allowed, request.iccid
            assert response.deny_reason == r.DENY_REASON_UNKNOWN_SIM, response

    def _learn_AdvanceTime(self, request: k.AdvanceTimeRequest, answer: Answer) -> None:
        if answer.code == grpc.StatusCode.OK:
            now = answer.responses[0].now.ToDatetime(UTC)
            assert now >= self.model.now, "time went back"
            self.model.now = now

    def _learn_RateUsage(self, request: r.RateUsageRequest, answer: Answer) -> None:
        if answer.code == grpc.StatusCode.OK:
            self._learn_results(list(request.records), list(answer.responses[0].results))

    def _learn_StreamUsage(self, request: list[r.StreamUsageRequest], answer: Answer) -> None:
        acks = answer.responses
        assert len(acks) <= len(request)
        if answer.code == grpc.StatusCode.OK:
            assert len(acks) == len(request), "a batch went unacknowledged"
        for batch, ack in zip(request, acks, strict=False):
            assert ack.batch_id == batch.batch_id, "acknowledgements out of order"
            self._learn_results(list(batch.records), list(ack.results))
        for batch in request[len(acks) :]:  # sent, not acknowledged: maybe committed
            self.model.in_doubt.extend(batch.records)

    def _learn_results(
        self,
        records: list[t.UsageRecord],
        results: list[t.RecordResult],
        stored: dict[tuple[str, str], t.UsageRecord] | None = None,
    ) -> None:
        """`stored` (a retry of records in doubt): for each of their ids stored before the
        retry, the record stored with it. A DUPLICATE of an id not counted yet then means a
        failed stream stored it: that record is counted, whichever of the records sent with
        the id it was (the fuzz reuses ids with other contents)."""
        assert len(results) == len(records), "one result per record"
        for record, result in zip(records, results, strict=True):
            # An INVALID record's id is echoed cut to 128 characters: no 300 KB echoes.
            echoed = record.record_id[:128] if result.status == t.RECORD_STATUS_INVALID else None
            assert result.record_id in (record.record_id, echoed)
            assert result.status in RECORD_STATUSES, result
            self.model.record_statuses[t.RecordStatus.Name(result.status)] += 1
            if result.status == t.RECORD_STATUS_RATED:
                self._count(record)
            elif (
                stored is not None
                and result.status == t.RECORD_STATUS_DUPLICATE
                and (key := self.model.key(record)) is not None
                and key not in self.model.rated_ids
            ):
                assert key in stored, f"DUPLICATE, never stored: {key}"
                self._count(stored[key])

    def _count(self, record: t.UsageRecord) -> None:
        key = self.model.key(record)
        assert key is not None, f"rated, yet of no SIM or period known: {record.record_id!r}"
        assert key not in self.model.rated_ids, f"counted twice: {key}"
        self.model.rated_ids.add(key)
        self.model.rated[(record.iccid, key[1])][record.usage_type] += record.quantity


def run_fuzz(
    fuzzer: Fuzzer, methods: list[MethodDescriptor], examples: int, fuzz_seed: int | str
) -> None:
    """`examples` hypothesis examples of 1 to 12 calls of `methods`, seeded with `fuzz_seed`."""

    @seed(fuzz_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        for _ in range(data.draw(st.integers(1, 12))):
            method = data.draw(st.sampled_from(methods))
            request = data.draw(request_strategy(method, fuzzer.model))
            if fuzzer.failure is not None:
                # Nothing after a failure is meaningful; drawing on keeps every example's
                # draws independent of the server, as hypothesis requires.
                continue
            answer = fuzzer.call_from_thread(method, request)
            try:
                fuzzer.check(method, request, answer)
            except AssertionError as exc:
                fuzzer.failure = f"{method.name}: {exc}\nrequest: {shown(request)}"

    fuzz()
    # Raised here, not inside the example: hypothesis would replay the failing example to
    # report it, against a server whose state has moved on (a "flaky" failure).
    assert fuzzer.failure is None, fuzzer.failure


def shown(request: Any) -> str:
    text = str(request)
    return text if len(text) < 3_000 else text[:3_000] + f"... ({len(text)} characters)"
