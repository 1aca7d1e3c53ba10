"""Caller authentication (API keys) and authorization (roles).

Keys travel as `authorization: Bearer <key>` metadata. The keys file (RATING_API_KEYS_FILE)
holds only SHA-256 hashes of the keys — keys are long random tokens, so a fast hash is
enough and a stolen file reveals no key:

    {"keys": [{"name": "crm-prod", "sha256": "<64 hex>", "roles": ["oss"]}, ...]}

`simrating keys create --name crm-prod --role oss` (or `python -m service.api.api_keys`, same
flags) makes a new key and prints its entry.

Roles and what they may call (`admin` may call everything, ClockService included):

    oss        CatalogService, ProvisioningService, RatingService.AuthorizeSession and
               RatingService.GetSimStatus
    mediation  RatingService.RateUsage, StreamUsage and AuthorizeSession
    billing    BillingService, plus the read-only calls GetPlan, ListPlans, GetAccount
               and GetSimStatus
    admin      everything

Health checks and server reflection are always open. With no keys file the service is
open to every caller (local development) and says so loudly at start.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from service.domain.errors import InvalidArgument, PermissionDenied, Unauthenticated

ROLES: Mapping[str, frozenset[str]] = {
    "oss": frozenset(
        {
            "rating.v1.CatalogService/*",
            "rating.v1.ProvisioningService/*",
            "rating.v1.RatingService/AuthorizeSession",
            "rating.v1.RatingService/GetSimStatus",
        }
    ),
    "mediation": frozenset(
        {
            "rating.v1.RatingService/RateUsage",
            "rating.v1.RatingService/StreamUsage",
            "rating.v1.RatingService/AuthorizeSession",
        }
    ),
    "billing": frozenset(
        {
            "rating.v1.BillingService/*",
            "rating.v1.CatalogService/GetPlan",
            "rating.v1.CatalogService/ListPlans",
            "rating.v1.CatalogService/GetAccount",
            "rating.v1.RatingService/GetSimStatus",
        }
    ),
    "admin": frozenset({"*"}),
}
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
ANONYMOUS = "anonymous"

Metadata = tuple[tuple[str, str | bytes], ...] | None


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    roles: frozenset[str]

    def may_call(self, service: str, method: str) -> bool:
        for role in self.roles:
            allowed = ROLES.get(role, frozenset())
            if "*" in allowed or f"{service}/*" in allowed or f"{service}/{method}" in allowed:
                return True
        return False


_ANONYMOUS = Caller(ANONYMOUS, frozenset({"admin"}))


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    """Maps a request's metadata to a Caller, or refuses it."""

    def __init__(self, callers_by_hash: Mapping[str, Caller] | None) -> None:
        self._by_hash = callers_by_hash  # None: open service

    @property
    def open(self) -> bool:
        return self._by_hash is None

    @classmethod
    def from_file(cls, path: Path | None) -> Authenticator:
        if path is None:
            return cls(None)
        try:
            document = json.loads(path.read_text())
            entries = document["keys"]
            callers = {}
            for i, entry in enumerate(entries):
                roles = frozenset(entry["roles"])
                unknown = roles - ROLES.keys()
                if unknown or not roles:
                    raise InvalidArgument(
                        f"keys[{i}].roles", f"unknown or no roles {sorted(unknown)}"
                    )
                digest = str(entry["sha256"]).lower()
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise InvalidArgument(f"keys[{i}].sha256", "must be 64 hex digits")
                callers[digest] = Caller(str(entry["name"]), roles)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument("RATING_API_KEYS_FILE", f"cannot read {path}: {exc}") from exc
        return cls(callers)

    def caller_without_key(self, service: str) -> Caller | None:
        """Who calls `service` without a key (an open service, or no keys configured);
        None when each call must carry one."""
        return _ANONYMOUS if self._by_hash is None or service in OPEN_SERVICES else None

    def authenticate(self, service: str, method: str, metadata: Callable[[], Metadata]) -> Caller:
        """`metadata` gives the call's metadata; it is only asked for when a key is needed."""
        keyless = self.caller_without_key(service)
        if keyless is not None:
            return keyless
        by_hash = self._by_hash
        assert by_hash is not None  # without keys, every caller is keyless
        key = _bearer_key(metadata())
        if key is None:
            raise Unauthenticated("missing 'authorization: Bearer <key>' metadata")
        digest = key_hash(key)
        caller = None
        for known, candidate in by_hash.items():  # constant-time comparison per key
            if hmac.compare_digest(known, digest):
                caller = candidate
        if caller is None:
            raise Unauthenticated("unknown API key")
        if not caller.may_call(service, method):
            raise PermissionDenied(
                f"caller {caller.name!r} (roles {', '.join(sorted(caller.roles))}) "
                f"may not call {service}/{method}"
            )
        return caller


def _bearer_key(metadata: Metadata) -> str | None:
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            scheme, _, key = value.partition(" ")
            if scheme.lower() == "bearer" and key.strip():
                return key.strip()
    return None


def new_key(name: str, roles: Iterable[str]) -> tuple[str, dict[str, object]]:
    """A new random key and its keys-file entry (which holds only the key's hash)."""
    wanted = sorted(set(roles))
    unknown = set(wanted) - ROLES.keys()
    if unknown or not wanted:
        raise InvalidArgument("roles", f"unknown or no roles {sorted(unknown)}")
    key = secrets.token_urlsafe(32)
    return key, {"name": name, "sha256": key_hash(key), "roles": wanted}


def describe(key: str, entry: Mapping[str, object]) -> str:
    return (
        f"key (give it to the caller; it is not stored anywhere): {key}\n"
        f"entry for RATING_API_KEYS_FILE: {json.dumps(entry)}"
    )


def main() -> None:
    """`python -m service.api.api_keys`, the same as `simrating keys create`."""
    parser = argparse.ArgumentParser(
        prog="python -m service.api.api_keys",
        description="Make a new API key and its keys-file entry.",
    )
    parser.add_argument("--name", required=True, help="the caller's name, shown in logs")
    parser.add_argument("--role", action="append", choices=sorted(ROLES), required=True)
    args = parser.parse_args()
    print(describe(*new_key(args.name, args.role)))


if __name__ == "__main__":
    main()
