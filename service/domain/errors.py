"""The one hierarchy of domain errors, translated to gRPC status codes by the API layer.

RatingError
├── InvalidArgument      bad input; names the offending field     -> INVALID_ARGUMENT
├── NotFound             unknown plan, account, SIM or invoice     -> NOT_FOUND
├── AlreadyExists        same id, different immutable content      -> ALREADY_EXISTS
├── FailedPrecondition   a rule forbids it in the current state    -> FAILED_PRECONDITION
├── Overloaded           a bounded queue or limit is full          -> RESOURCE_EXHAUSTED
├── StorageUnavailable   PostgreSQL cannot be reached or serve now -> UNAVAILABLE
├── ShuttingDown         the service is stopping                   -> UNAVAILABLE
└── InternalFailure      a failure reported where it happened      -> INTERNAL


Database failures: only those `storage.transactions.is_unavailable` names (SQLSTATE
classes 08 and 53, 57P0x, a lost or refused connection, a timeout) are
`StorageUnavailable`. A serialization failure or deadlock (40001, 40P01) reruns the
transaction a few times (`transactions.retried`) and is an ordinary failure after that.
Any other database error (a violated constraint, a data error) is a bug: the caller gets
INTERNAL, never UNAVAILABLE (which it would retry forever), and the service logs it with
its traceback and counts it in `rating_internal_errors_total{operation}`. Any unexpected
exception is INTERNAL too.
"""

from __future__ import annotations


class RatingError(Exception):
    """Base of every error the service reports to callers."""


class InvalidArgument(RatingError):
    """A request field is malformed or out of range."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(RatingError):
    """An id that does not exist."""


class AlreadyExists(RatingError):
    """An immutable object exists with different content."""


class FailedPrecondition(RatingError):
    """The request is well-formed but a rule forbids it now."""


class Overloaded(RatingError):
    """A bounded queue is full; the caller should back off and retry."""


class StorageUnavailable(RatingError):
    """PostgreSQL is unreachable; nothing was acknowledged, retrying is safe."""


class ShuttingDown(RatingError):
    """The service is stopping; resend what was not acknowledged (ids make that safe)."""


class InternalFailure(RatingError):
    """Something failed that is not the caller's doing nor an outage (a bug, a violated
    constraint); it was logged with its traceback and counted where it happened."""


class Unauthenticated(RatingError):
    """No API key, or one we do not know."""


class PermissionDenied(RatingError):
    """A known caller whose roles do not allow this RPC."""
