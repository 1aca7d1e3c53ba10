"""The `simrating` command: serve, and operate the service through its gRPC API.

Every command but `serve` is a gRPC client of the service at `--addr` (`keys create` and
`invoices export --database-url` need no service at all).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import click
import grpc
from rich.table import Table

from service.cli import catalog as catalog_files
from service.cli import invoices as invoice_views
from service.cli import sims as sim_files
from service.cli import usage as cdr_files
from service.cli.connection import (
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_SERVICE,
    EXIT_USAGE,
    ServiceFailure,
    Target,
)
from service.cli.output import (
    counts_table,
    progress_bar,
    rejects_path,
    stderr,
    stdout,
    write_rejects,
)

EPILOG = """\b
Exit status:
  0   done; every row or document accepted
  1   not done: the service could not be reached, refused the caller (UNAVAILABLE,
      UNAUTHENTICATED, PERMISSION_DENIED, ...) or has no such object
  2   done, but some rows or documents were refused (see FILE.rejected.csv)
  64  bad flags or arguments
"""

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
PATH_IN = click.Path(exists=True, dir_okay=False, path_type=Path)


def _target(ctx: click.Context) -> Target:
    target: Target = ctx.find_object(Target)  # type: ignore[assignment]
    return target


def run(target: Target, work: Awaitable[int]) -> int:
    """Run one command's coroutine; a gRPC error that escapes it means the service could not
    be reached or refused the caller: say so and exit 1."""
    try:
        return asyncio.run(work)  # type: ignore[arg-type]
    except ServiceFailure as exc:
        stderr.print(f"simrating: {exc}")
    except (grpc.aio.AioRpcError, BaseExceptionGroup) as exc:
        error = cdr_files.is_stream_failure(exc)
        if error is None:
            raise
        stderr.print(f"simrating: {target.failure(error)}")
    return EXIT_SERVICE


@click.group(context_settings=CONTEXT, epilog=EPILOG)
@click.option(
    "--addr",
    envvar="RATING_GRPC_ADDR",
    default="127.0.0.1:50051",
    show_default=True,
    show_envvar=True,
    help="the service's gRPC address",
)
@click.option(
    "--api-key",
    envvar="RATING_API_KEY",
    show_envvar=True,
    help="sent as 'authorization: Bearer <key>'",
)
@click.option("--tls-ca", type=PATH_IN, help="PEM CA bundle: connect with TLS, verify with it")
@click.option("--tls-cert", type=PATH_IN, help="PEM client certificate chain (mutual TLS)")
@click.option("--tls-key", type=PATH_IN, help="PEM private key of --tls-cert")
@click.pass_context
def cli(
    ctx: click.Context,
    addr: str,
    api_key: str | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """simrating: real-time rating for IoT SIMs. Run the service, load its catalog, provision
    SIMs, send CDR files, read invoices."""
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    ctx.obj = Target(addr, api_key or None, tls_ca, tls_cert, tls_key)


# --- serve --------------------------------------------------------------------------------


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args: tuple[str, ...]) -> None:
    """Run the service, exactly as `python -m service` (`serve --help` lists its settings)."""
    from service import __main__ as entry

    entry.main(list(args), prog="simrating serve")


# --- keys ---------------------------------------------------------------------------------


@cli.group(context_settings=CONTEXT)
def keys() -> None:
    """API keys (no service needed)."""


@keys.command("create", epilog=EPILOG)
@click.option("--name", required=True, help="the caller's name, shown in logs")
@click.option(
    "--role",
    "roles",
    required=True,
    multiple=True,
    type=click.Choice(["oss", "mediation", "billing", "admin"]),
    help="repeatable",
)
def keys_create(name: str, roles: tuple[str, ...]) -> int:
    """Make a new API key and print it with its RATING_API_KEYS_FILE entry."""
    from service.api import api_keys

    key, entry = api_keys.new_key(name, roles)
    stdout.print(api_keys.describe(key, entry), markup=False, soft_wrap=True)
    return EXIT_OK


# --- catalog ------------------------------------------------------------------------------


@cli.group(context_settings=CONTEXT)
def catalog() -> None:
    """Plans and accounts."""


@catalog.command("apply", epilog=EPILOG)
@click.argument("files", nargs=-1, required=True, type=PATH_IN)
@click.pass_context
def catalog_apply(ctx: click.Context, files: tuple[Path, ...]) -> int:
    """Apply plans and accounts from JSON or YAML FILES.

    \b
    Documents are {"plan": {...}} or {"account": {...}} in the proto's JSON mapping;
    a YAML file holds several separated by '---', a JSON file one or an array of them.
    Every document of every file is read and checked first: a bad one is reported with
    its file, index and field, and nothing is applied. Then they are applied in order,
    each reported created, unchanged or updated; if the service refuses one (a plan is
    immutable, ...), the command stops there: what was applied before stays applied.
    """
    target = _target(ctx)
    documents: list[catalog_files.Document] = []
    try:
        for path in files:
            documents.extend(catalog_files.read_documents(path))
    except catalog_files.DocumentError as exc:
        stderr.print(f"refused: {exc}; nothing applied")
        return EXIT_REJECTED
    return run(target, _catalog_apply(target, documents))


async def _catalog_apply(target: Target, documents: list[catalog_files.Document]) -> int:
    async with target.channel() as channel:
        try:
            catalog_files.validate(documents, await catalog_files.known_plans(target, channel))
        except catalog_files.DocumentError as exc:
            stderr.print(f"refused: {exc}; nothing applied")
            return EXIT_REJECTED
        table = Table(title="catalog", title_justify="left")
        for column in ("document", "kind", "id", "result"):
            table.add_column(column)
        status = EXIT_OK
        for i, doc in enumerate(documents):
            outcome = await catalog_files.apply(target, channel, doc)
            table.add_row(doc.where, doc.kind, doc.object_id, outcome.result)
            if outcome.result == "refused":
                stdout.print(table)
                stderr.print(
                    f"refused: {doc.where} ({doc.kind} {doc.object_id!r}): {outcome.detail};"
                    f" applied before it: {i} document(s); not applied after it:"
                    f" {len(documents) - i - 1}",
                )
                return EXIT_REJECTED
        stdout.print(table)
    return status


# --- sims ---------------------------------------------------------------------------------


@cli.group(context_settings=CONTEXT)
def sims() -> None:
    """SIM provisioning and status."""


@sims.command("provision", epilog=EPILOG)
@click.option("--account", "account_id", required=True, help="account_id of every SIM")
@click.option("--plan", "plan_id", required=True, help="plan_id of every SIM")
@click.argument("file", type=PATH_IN)
@click.pass_context
def sims_provision(ctx: click.Context, account_id: str, plan_id: str, file: Path) -> int:
    """Provision the ICCIDs of a CSV FILE (header `iccid`, optional `provisioned_at` in
    RFC 3339; other columns are ignored), in calls of at most 10,000.

    Prints a summary by status. Every row not CREATED or ALREADY_PROVISIONED goes to
    FILE.rejected.csv (its line number, its columns, status and reason); the file is
    removed when there are none.
    """
    target = _target(ctx)
    try:
        source = sim_files.read_provision_file(file)
    except sim_files.InputError as exc:
        stderr.print(f"refused: {exc}")
        return EXIT_REJECTED
    return run(target, _provision(target, source, account_id, plan_id))


async def _provision(
    target: Target, source: sim_files.ProvisionFile, account_id: str, plan_id: str
) -> int:
    results: list[tuple[sim_files.Row, str, str]] = []
    try:
        async with target.channel() as channel:
            with progress_bar("SIMs") as progress:
                task = progress.add_task("provisioning", total=len(source.rows))
                for rows in sim_files.calls(source.rows):
                    answers = await sim_files.provision_call(
                        target, channel, account_id, plan_id, rows
                    )
                    results.extend(answers)
                    progress.advance(task, len(rows))
    finally:
        counts = sim_files.tally(source, results)
        rejected = write_rejects(rejects_path(source.path), source.columns, source.rejected)
        stdout.print(counts_table(f"{source.path}", counts, sim_files.ACCEPTED))
        if rejected:
            stderr.print(f"{rejected:,} rows rejected: see {rejects_path(source.path)}")
    return EXIT_REJECTED if rejected else EXIT_OK


@sims.command("status", epilog=EPILOG)
@click.argument("iccid")
@click.pass_context
def sims_status(ctx: click.Context, iccid: str) -> int:
    """Show one SIM: state, billing start, activation, usage of the current period."""
    target = _target(ctx)
    return run(target, _sim_status(target, iccid))


async def _sim_status(target: Target, iccid: str) -> int:
    from rating.v1 import rating_service_pb2 as r
    from rating.v1 import rating_service_pb2_grpc as r_grpc
    from rating.v1 import types_pb2 as t

    async with target.channel() as channel:
        stub = r_grpc.RatingServiceStub(channel)
        try:
            response = await stub.GetSimStatus(
                r.GetSimStatusRequest(iccid=iccid), metadata=target.metadata, timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND:
                raise
            stderr.print(f"no SIM {iccid!r}: {exc.details()}")
            return EXIT_SERVICE
    s = response.status
    name = invoice_views.enum_name
    when = sim_files.format_time
    table = Table(title=f"SIM {s.iccid}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for label, value in (
        ("account", s.account_id),
        ("plan", s.plan_id),
        ("state", name(t.SimState, s.state, "SIM_STATE_")),
        ("provisioned at", when(s.provisioned_at)),
        ("billing started at", when(s.billing_started_at)),
        (
            "billing start reason",
            name(t.BillingStartReason, s.billing_start_reason, "BILLING_START_REASON_"),
        ),
        ("activation deadline", when(s.activation_deadline)),
        ("suspended at", when(s.suspended_at)),
        ("terminated at", when(s.terminated_at)),
        ("current period", s.current_period),
    ):
        table.add_row(label, value)
    for progress in s.first_use_progress:
        table.add_row(
            f"first use {name(t.UsageType, progress.usage_type, 'USAGE_TYPE_')}",
            f"{progress.quantity:,} of {progress.threshold:,}",
        )
    for usage in s.period_usage:
        table.add_row(
            f"period usage {name(t.UsageType, usage.usage_type, 'USAGE_TYPE_')}",
            f"{usage.quantity:,}",
        )
    stdout.print(table)
    return EXIT_OK


# --- usage --------------------------------------------------------------------------------


@cli.group(context_settings=CONTEXT)
def usage() -> None:
    """Usage records (CDRs)."""


@usage.command("send", epilog=EPILOG)
@click.argument("files", nargs=-1, required=True, type=PATH_IN)
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--streams", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--window",
    default=16,
    show_default=True,
    type=click.IntRange(1, 256),
    help="batches in flight per stream",
)
@click.pass_context
def usage_send(
    ctx: click.Context, files: tuple[Path, ...], batch_size: int, streams: int, window: int
) -> int:
    """Send CDR FILES over StreamUsage.

    \b
    CSV with the header record_id,iccid,usage_type,quantity,event_time[,session_id]
    (other columns are ignored), or JSON Lines with the same field names (*.jsonl,
    *.ndjson); gzipped files (*.gz) too. usage_type is DATA, VOICE or SMS, event_time
    RFC 3339 (2026-01-05T10:00:00Z).

    Prints a summary by status per file. Every record answered other than RATED or
    DUPLICATE, and every malformed line (a malformed line never stops the file), goes to
    FILE.rejected.csv with its line number and the reason. Record ids are idempotency
    keys: after an interruption, send the same files again; what was stored comes back
    DUPLICATE and is counted once.
    """
    target = _target(ctx)
    sources = [cdr_files.CdrFile(path) for path in files]
    outputs = [rejects_path(path) for path in files]
    if len(set(outputs)) != len(outputs):
        raise click.UsageError("two FILES would share one rejects file; send them separately")
    try:
        for source in sources:
            cdr_files.check_header(source)
    except cdr_files.InputError as exc:
        stderr.print(f"refused: {exc}; nothing sent")
        return EXIT_REJECTED
    return run(target, _usage_send(target, sources, batch_size, streams, window))


async def _usage_send(
    target: Target, sources: list[cdr_files.CdrFile], batch_size: int, streams: int, window: int
) -> int:
    started = time.perf_counter()
    progress = progress_bar("records")
    total = sum(source.count_lines() for source in sources) if not progress.disable else None
    task = progress.add_task("sending", total=total)
    sender = cdr_files.Sender(
        target, streams, window, on_ack=lambda batch: progress.advance(task, len(batch.lines))
    )

    def produce() -> Any:
        for source in sources:
            yield from cdr_files.batches(source, batch_size)

    rejected = 0
    interrupted = False
    try:
        with progress:
            await sender.send(produce())
    except BaseExceptionGroup as group:
        interrupted = True
        broken = group.subgroup(lambda exc: isinstance(exc, (OSError, EOFError)))
        if broken is None or cdr_files.is_stream_failure(group) is not None:
            raise
        # A file that breaks off (a truncated gzip file, ...): what was read is accounted for.
        stderr.print(f"refused: a file could not be read to its end: {broken.exceptions[0]}")
        rejected += 1
    except BaseException:
        interrupted = True
        raise
    finally:
        seconds = time.perf_counter() - started
        for source in sources:
            written = write_rejects(rejects_path(source.path), source.columns, source.rejected)
            rejected += written
            stdout.print(counts_table(str(source.path), source.counts, cdr_files.ACCEPTED))
            if written:
                stderr.print(f"{written:,} lines rejected: see {rejects_path(source.path)}")
        done = sum(sum(source.counts.values()) for source in sources)
        stderr.print(
            f"{sender.acknowledged:,} records acknowledged in {seconds:.1f} s"
            f" ({sender.acknowledged / seconds if seconds else 0:,.0f} records/s);"
            f" {done:,} lines accounted for"
        )
        if interrupted:
            stderr.print(
                "interrupted: send the same files again; records already stored come back DUPLICATE"
            )
    return EXIT_REJECTED if rejected else EXIT_OK


# --- invoices -----------------------------------------------------------------------------


@cli.group(context_settings=CONTEXT)
def invoices() -> None:
    """Invoices and bill previews (BillingService)."""


@invoices.command("list", epilog=EPILOG)
@click.option("--account", "account_id", required=True)
@click.pass_context
def invoices_list(ctx: click.Context, account_id: str) -> int:
    """List the settled invoices of an account, oldest period first."""
    target = _target(ctx)

    async def work() -> int:
        from rating.v1 import billing_service_pb2 as b

        response = await _billing(
            target, "ListInvoices", b.ListInvoicesRequest(account_id=account_id)
        )
        if response is None:
            return EXIT_SERVICE
        stdout.print(invoice_views.invoices_table(list(response.invoices)))
        return EXIT_OK

    return run(target, work())


@invoices.command("show", epilog=EPILOG)
@click.option("--account", "account_id", required=True)
@click.option("--period", help="YYYY-MM (default: the latest settled invoice)")
@click.option(
    "--preview",
    is_flag=True,
    help="the bill computed from what is known now (default period: the current one)",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def invoices_show(
    ctx: click.Context, account_id: str, period: str | None, preview: bool, fmt: str
) -> int:
    """Show one invoice: its lines and total."""
    target = _target(ctx)

    async def work() -> int:
        invoice = await _one_invoice(target, account_id, period, preview)
        if invoice is None:
            return EXIT_SERVICE
        if fmt == "json":
            sys.stdout.write(invoice_views.proto_json(invoice))
        else:
            stdout.print(invoice_views.invoice_table(invoice))
        return EXIT_OK

    return run(target, work())


@invoices.command("export", epilog=EPILOG)
@click.option("--account", "account_id", required=True)
@click.option("--period", help="YYYY-MM (default: the latest settled invoice)")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True
)
@click.option(
    "--database-url",
    envvar="RATING_DATABASE_URL",
    help="read the stored invoice from PostgreSQL, with its per-SIM breakdown [env var:"
    " RATING_DATABASE_URL]",
)
@click.pass_context
def invoices_export(
    ctx: click.Context, account_id: str, period: str | None, fmt: str, database_url: str | None
) -> int:
    """Export a settled invoice to stdout as CSV or JSON.

    \b
    Through the API (default): CSV `line` and `total` rows; JSON, the Invoice message.
    With --database-url (works while the service is down): the stored invoice with its
    per-SIM breakdown: CSV `line`, `sim` and `total` rows; JSON, the stored document.
    """
    target = _target(ctx)
    if database_url:
        if not period:
            raise click.UsageError("--database-url needs --period")
        text = asyncio.run(
            invoice_views.export_from_database(database_url, account_id, period, fmt)
        )
        if text is None:
            stderr.print(f"no invoice for account {account_id!r} period {period}")
            return EXIT_SERVICE
        sys.stdout.write(text)
        return EXIT_OK

    async def work() -> int:
        invoice = await _one_invoice(target, account_id, period, preview=False)
        if invoice is None:
            return EXIT_SERVICE
        sys.stdout.write(invoice_views.export_from_api(invoice, fmt))
        return EXIT_OK

    return run(target, work())


async def _billing(target: Target, method: str, request: Any) -> Any:
    """One BillingService call; None (reported) when the service has no such object."""
    from rating.v1 import billing_service_pb2_grpc as b_grpc

    async with target.channel() as channel:
        stub = b_grpc.BillingServiceStub(channel)
        try:
            return await getattr(stub, method)(request, metadata=target.metadata, timeout=60)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise
            stderr.print(f"{exc.code().name}: {exc.details()}")
            return None


async def _one_invoice(target: Target, account_id: str, period: str | None, preview: bool) -> Any:
    from rating.v1 import billing_service_pb2 as b

    if preview:
        preview_request = b.GetBillPreviewRequest(account_id=account_id, period=period or "")
        response = await _billing(target, "GetBillPreview", preview_request)
        return None if response is None else response.invoice
    if period:
        request = b.GetInvoiceRequest(account_id=account_id, period=period)
        response = await _billing(target, "GetInvoice", request)
        return None if response is None else response.invoice
    listed = await _billing(target, "ListInvoices", b.ListInvoicesRequest(account_id=account_id))
    if listed is None:
        return None
    if not listed.invoices:
        stderr.print(f"account {account_id!r} has no settled invoice yet")
        return None
    return listed.invoices[-1]


# --- entry point --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Console script: run the command, exit with its status (see EPILOG)."""
    try:
        status = cli.main(args=argv, prog_name="simrating", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_SERVICE)
    except click.Abort:
        stderr.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else EXIT_OK)
