"""The CLI's side of the gRPC API: where the service is, how to reach it, what its
answers mean for the exit status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

# Exit statuses of every command (also in `simrating --help` and the README).
EXIT_OK = 0
EXIT_SERVICE = 1  # the service could not be reached, refused the caller, or failed
EXIT_REJECTED = 2  # the command ran, but some rows or documents were refused
EXIT_USAGE = 64  # bad flags or arguments (EX_USAGE)

# Codes that refuse one request's content (a row, a document, a group of rows): the command
# records them and goes on. Any other code means the service cannot serve this caller now.
CONTENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


class ServiceFailure(Exception):
    """The service could not be reached or refused the caller: exit status 1."""

    def __init__(self, addr: str, error: grpc.aio.AioRpcError) -> None:
        code = error.code()
        self.code: grpc.StatusCode = code
        what = "could not reach" if code is grpc.StatusCode.UNAVAILABLE else "refused by"
        super().__init__(f"{what} {addr}: {code.name}: {error.details()}")


def is_content_error(error: grpc.aio.AioRpcError) -> bool:
    return error.code() in CONTENT_CODES


@dataclass(frozen=True, slots=True)
class Target:
    """The service to talk to: address, API key and TLS files."""

    addr: str
    api_key: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    @property
    def tls(self) -> bool:
        return any(p is not None for p in (self.tls_ca, self.tls_cert, self.tls_key))

    def channel(self, options: Sequence[tuple[str, Any]] = ()) -> Any:
        """A new grpc.aio channel (TLS when any TLS file is given)."""
        if not self.tls:
            return grpc.aio.insecure_channel(self.addr, options=list(options))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca.read_bytes() if self.tls_ca else None,
            private_key=self.tls_key.read_bytes() if self.tls_key else None,
            certificate_chain=self.tls_cert.read_bytes() if self.tls_cert else None,
        )
        return grpc.aio.secure_channel(self.addr, credentials, options=list(options))

    def failure(self, error: grpc.aio.AioRpcError) -> ServiceFailure:
        return ServiceFailure(self.addr, error)
