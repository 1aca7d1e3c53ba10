"""One server interceptor for every RPC: caller authentication, metrics, the canonical log
line, error mapping.

Domain errors become status codes from the single table below; anything unexpected (a
bug, a database error other than an outage) is logged with its traceback, counted in
`rating_internal_errors_total{operation=<method>}` and answered INTERNAL, so no caller
ever sees UNKNOWN.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog

from service.api.api_keys import Authenticator, Caller
from service.domain import errors
from service.ops.metrics import Metrics

log = structlog.get_logger("rpc")

STATUS_FOR_ERROR: tuple[tuple[type[errors.RatingError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.StorageUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (errors.InternalFailure, grpc.StatusCode.INTERNAL),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
)


def status_for(exc: errors.RatingError) -> grpc.StatusCode:
    for error_type, code in STATUS_FOR_ERROR:
        if isinstance(exc, error_type):
            return code
    return grpc.StatusCode.INTERNAL


# The unary calls that change nothing. A successful one's log line is written for one call
# in `log_reads_every` (RATING_RPC_LOG_READS): session-start reads come thousands of times
# a second, and a JSON line each would cost more than answering them. Writes, streams and
# every call that fails are always logged; the metrics count every call.
READ_METHODS = frozenset(
    {
        "/rating.v1.RatingService/AuthorizeSession",
        "/rating.v1.RatingService/GetSimStatus",
        "/rating.v1.BillingService/GetBillPreview",
        "/rating.v1.BillingService/GetInvoice",
        "/rating.v1.BillingService/ListInvoices",
        "/rating.v1.CatalogService/GetPlan",
        "/rating.v1.CatalogService/ListPlans",
        "/rating.v1.CatalogService/GetAccount",
        "/rating.v1.ClockService/GetTime",
        "/grpc.health.v1.Health/Check",
    }
)


class _Method:
    """What every call of one method shares: its names, its counts in the grpc_server_*
    series, the caller it needs no key for and the sampling of its log line."""

    def __init__(
        self, metrics: Metrics, auth: Authenticator, method: str, grpc_type: str, log_every: int
    ) -> None:
        _, _, path = method.partition("/")
        self.service, _, self.method = path.partition("/")
        self.metrics = metrics
        self.counts = metrics.rpc.method(grpc_type, self.service, self.method)
        self.count_caller = metrics.rpc.count_caller  # rating_rpc_calls_total
        self.auth = auth
        # Every caller of an open service, or of any service when no keys are configured.
        self.keyless = auth.caller_without_key(self.service)
        self.log_every = log_every  # 1: every call; 0: only failures
        self.unlogged = 0  # successful calls since the last one logged

    def authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        """The caller (counted in rating_rpc_calls_total), or Unauthenticated /
        PermissionDenied raised."""
        caller = self.keyless or self.auth.authenticate(
            self.service, self.method, context.invocation_metadata
        )
        self.count_caller(caller.name)
        return caller

    def finished(self, code: grpc.StatusCode, started: float, caller: str, **fields: Any) -> None:
        """Count the call's outcome, and log it: a failure always, a success one in
        `log_every` (never with 0)."""
        elapsed = time.perf_counter() - started
        ok = code is _OK
        self.counts.finished("OK" if ok else code.name, elapsed)
        if ok and self.log_every != 1:
            if self.log_every == 0:
                return
            self.unlogged += 1
            if self.unlogged < self.log_every:
                return
            self.unlogged = 0
            fields["logged_one_in"] = self.log_every
        log.info(
            "rpc",
            service=self.service,
            method=self.method,
            caller=caller,
            code=code.name,
            duration_ms=round(elapsed * 1000, 3),
            **fields,
        )


_OK = grpc.StatusCode.OK


class _Call:
    """Book-keeping of one RPC that goes beyond the common path (a stream, a failure):
    start time, caller, outcome."""

    __slots__ = ("book", "caller", "started")

    def __init__(self, book: _Method, started: float | None = None, caller: str = "-") -> None:
        self.book = book
        self.caller = caller
        if started is None:
            started = time.perf_counter()
            book.counts.started += 1
        self.started = started

    @property
    def method(self) -> str:
        return self.book.method

    @property
    def metrics(self) -> Metrics:
        return self.book.metrics

    def authenticate(self, context: grpc.aio.ServicerContext) -> None:
        """Refuse the call (Unauthenticated / PermissionDenied) or note who makes it."""
        self.caller = self.book.authenticate(context).name

    def finish(self, code: grpc.StatusCode, **fields: Any) -> None:
        self.book.finished(code, self.started, self.caller, **fields)


# Error messages quote what the caller sent; an id of 300 KB would make the status message
# (a percent-encoded trailer) overflow the peer's metadata limit, and the caller would see
# RESOURCE_EXHAUSTED instead of the real code. The field name comes first, so it survives.
MAX_MESSAGE_CHARS = 256


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[:MAX_MESSAGE_CHARS] + f"... ({len(message)} characters)"


async def _fail(call: _Call, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Record the outcome of a failed RPC and abort it with the mapped status."""
    if isinstance(exc, errors.RatingError):
        code = status_for(exc)
        message = _bounded(str(exc))
        if code == grpc.StatusCode.INTERNAL:  # logged with its traceback where it happened
            call.metrics.internal_errors.labels(call.method).inc()
        call.finish(code, error=message)
        await context.abort(code, message)
    if isinstance(exc, NotImplementedError):  # the generated base servicer's default
        call.finish(grpc.StatusCode.UNIMPLEMENTED)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented")
    call.metrics.internal_errors.labels(call.method).inc()
    call.finish(grpc.StatusCode.INTERNAL, error=repr(exc), exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    if code is None:  # not set by the handler
        return _OK
    if isinstance(code, grpc.StatusCode):
        return code
    return _OK


class ObservedHandlers(grpc.GenericRpcHandler):
    """One generic handler for every service added to it (`add`), each method wrapped once,
    at its first call: a call finds its wrapped handler with one dict look-up, whichever
    service it belongs to (grpc.aio asks each generic handler of a server in turn)."""

    def __init__(self, wrap: Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]) -> None:
        self._inner: list[grpc.GenericRpcHandler] = []
        self._wrap = wrap
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def add(self, handlers: grpc.GenericRpcHandler) -> None:
        self._inner.append(handlers)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        for inner in self._inner:
            handler = inner.service(handler_call_details)
            if handler is not None:
                wrapped = self._wrapped[method] = self._wrap(handler, method)
                return wrapped
        return None  # no such method (nothing is remembered for it)


class ObservabilityInterceptor:
    """Authentication, metrics, the log line and error mapping for every RPC: the service
    applies it to its servicers' handlers when adding them (`observed`)."""

    def __init__(
        self, metrics: Metrics, auth: Authenticator | None = None, log_reads_every: int = 1
    ) -> None:
        self._metrics = metrics
        self._auth = auth or Authenticator(None)
        self._log_reads_every = log_reads_every

    def observed(self) -> ObservedHandlers:
        """A generic handler to add services' generic handlers to, with every method
        wrapped (authentication, metrics, log line, error mapping), without grpc.aio's
        interceptor pipeline: no coroutine per call to find the handler (see
        docs/performance.md)."""
        return ObservedHandlers(self._wrap)

    def _book(self, method: str, grpc_type: str) -> _Method:
        log_every = self._log_reads_every if method in READ_METHODS else 1
        return _Method(self._metrics, self._auth, method, grpc_type, log_every)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_awaited(handler.unary_unary, method, "unary"),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method, "bidi_stream"),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, "server_stream"),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_awaited(self, behavior: Any, method: str, grpc_type: str) -> Any:
        """A handler that gives its answer when it returns: a unary call, or a stream whose
        handler writes with context.write() and returns.

        The common path, a call that succeeds, builds nothing per call: it runs thousands
        of times a second for the session-start reads (docs/performance.md). A handler
        written as a plain function (`def`) is answered right here, on the event loop,
        without a coroutine of its own: it must not block, and it answers or raises
        (grpc.aio alone would run it on a thread of its pool)."""
        book = self._book(method, grpc_type)
        counts = book.counts
        awaited = inspect.iscoroutinefunction(behavior)
        clock = time.perf_counter

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = clock()
            counts.started += 1
            caller = "-"
            try:
                caller = book.authenticate(context).name
                if awaited:
                    response = await behavior(request, context)
                else:
                    response = behavior(request, context)
            except asyncio.CancelledError:
                book.finished(grpc.StatusCode.CANCELLED, started, caller)
                raise
            except grpc.aio.AbortError:
                book.finished(_code_of(context), started, caller)
                raise
            except Exception as exc:
                await _fail(_Call(book, started, caller), context, exc)
            book.finished(_code_of(context) if awaited else _OK, started, caller)
            return response

        return wrapper

    def _wrap_stream(self, behavior: Any, method: str, grpc_type: str) -> Any:
        if not inspect.isasyncgenfunction(behavior):
            # A handler that writes its responses with context.write() and returns (the
            # health servicer's Watch) rather than yielding them.
            return self._wrap_awaited(behavior, method, grpc_type)
        book = self._book(method, grpc_type)

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(book)
            messages = 0
            try:
                call.authenticate(context)
                async for response in behavior(request, context):
                    messages += 1
                    yield response
            except asyncio.CancelledError:
                call.finish(grpc.StatusCode.CANCELLED, messages=messages)
                raise
            except grpc.aio.AbortError:
                call.finish(_code_of(context), messages=messages)
                raise
            except Exception as exc:
                await _fail(call, context, exc)
            call.finish(_code_of(context), messages=messages)

        return wrapper
