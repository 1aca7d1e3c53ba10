"""SimStatus message from the cache's view of a SIM."""

from __future__ import annotations

from rating.v1 import types_pb2 as pb
from service.api.convert import time_to_proto, usage_quantities
from service.usecases.sim_status import SimView


def sim_status_to_proto(view: SimView) -> pb.SimStatus:
    sim = view.sim
    out = pb.SimStatus(
        iccid=sim.iccid,
        account_id=sim.account_id,
        plan_id=sim.plan_id,
        state=sim.state.value,  # type: ignore[arg-type]
        billing_start_reason=(
            sim.billing_start_reason.value if sim.billing_start_reason else 0  # type: ignore[arg-type]
        ),
        first_use_progress=[
            pb.FirstUseProgress(usage_type=t.value, quantity=q, threshold=limit)  # type: ignore[arg-type]
            for t, q, limit in view.first_use_progress
        ],
        current_period=view.current_period,
        period_usage=usage_quantities(view.period_usage),
    )
    time_to_proto(sim.provisioned_at, out.provisioned_at)
    time_to_proto(sim.billing_started_at, out.billing_started_at)
    time_to_proto(view.activation_deadline, out.activation_deadline)
    time_to_proto(sim.terminated_at, out.terminated_at)
    time_to_proto(sim.suspended_at, out.suspended_at)
    return out
