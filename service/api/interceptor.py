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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from service.api.api_keys import Authenticator
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


class _Call:
    """Book-keeping of one RPC: start time, labels, outcome."""

    def __init__(self, metrics: Metrics, method: str, grpc_type: str) -> None:
        _, _, path = method.partition("/")
        self.service, _, self.method = path.partition("/")
        self.labels = (grpc_type, self.service, self.method)
        self.metrics = metrics
        self.started = time.perf_counter()
        self.caller = "-"
        metrics.grpc_started.labels(*self.labels).inc()

    def authenticate(self, auth: Authenticator, context: grpc.aio.ServicerContext) -> None:
        """Refuse the call (Unauthenticated / PermissionDenied) or note who makes it."""
        caller = auth.authenticate(self.service, self.method, context.invocation_metadata())
        self.caller = caller.name
        self.metrics.grpc_caller_calls.labels(caller.name).inc()

    def finish(self, code: grpc.StatusCode, **fields: Any) -> None:
        elapsed = time.perf_counter() - self.started
        self.metrics.grpc_handled.labels(*self.labels, code.name).inc()
        self.metrics.grpc_handling_seconds.labels(*self.labels).observe(elapsed)
        log.info(
            "rpc",
            service=self.service,
            method=self.method,
            caller=self.caller,
            code=code.name,
            duration_ms=round(elapsed * 1000, 3),
            **fields,
        )


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
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authentication, metrics, the log line and error mapping for every RPC."""

    def __init__(self, metrics: Metrics, auth: Authenticator | None = None) -> None:
        self._metrics = metrics
        self._auth = auth or Authenticator(None)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
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

    def _wrap_unary(self, behavior: Any, method: str) -> Any:
        metrics, auth = self._metrics, self._auth

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(metrics, method, "unary")
            try:
                call.authenticate(auth, context)
                response = await behavior(request, context)
            except asyncio.CancelledError:
                call.finish(grpc.StatusCode.CANCELLED)
                raise
            except grpc.aio.AbortError:
                call.finish(_code_of(context))
                raise
            except Exception as exc:
                await _fail(call, context, exc)
            call.finish(_code_of(context))
            return response

        return wrapper

    def _wrap_stream(self, behavior: Any, method: str, grpc_type: str) -> Any:
        if not inspect.isasyncgenfunction(behavior):
            # A handler that writes its responses with context.write() and returns (the
            # health servicer's Watch) rather than yielding them.
            return self._wrap_writing_stream(behavior, method, grpc_type)
        metrics, auth = self._metrics, self._auth

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(metrics, method, grpc_type)
            messages = 0
            try:
                call.authenticate(auth, context)
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

    def _wrap_writing_stream(self, behavior: Any, method: str, grpc_type: str) -> Any:
        metrics, auth = self._metrics, self._auth

        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> None:
            call = _Call(metrics, method, grpc_type)
            try:
                call.authenticate(auth, context)
                await behavior(request, context)
            except asyncio.CancelledError:
                call.finish(grpc.StatusCode.CANCELLED)
                raise
            except grpc.aio.AbortError:
                call.finish(_code_of(context))
                raise
            except Exception as exc:
                await _fail(call, context, exc)
            call.finish(_code_of(context))

        return wrapper
