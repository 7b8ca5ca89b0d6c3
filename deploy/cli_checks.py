"""Argument checks the `strata` commands make before they act, so that a wrong
argument is refused at once in the command's own words, naming what exists
(rather than a server's message about its own state, or a wait for a deadline).

Syntax (a malformed id, a negative LSN) is a usage error: argparse's exit code 2.
A well-formed argument that names nothing (an unknown tenant or timeline, ids in
the wrong order, a branch point past the end) raises `CheckFailed`: exit code 1.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from compute_shim import Client
from strata.errors import InvalidArgument
from strata.ids import Lsn, TenantId, TimelineId
from strata.ids import tenant_id as parse_tenant_id
from strata.ids import timeline_id as parse_timeline_id
from strata.v1 import timeline_pb2

# How many existing ids a message lists before it says how many more there are.
LISTED_IDS = 5


class CheckFailed(Exception):
    """An argument that names nothing on the stack: one line on stderr, exit code 1."""


def non_negative(text: str) -> int:
    """argparse type: a whole number (decimal, or 0x...), 0 or more."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: an LSN or a count is 0 or more")
    return value


def _id_arg(parse, what: str):  # type: ignore[no-untyped-def]
    def check(text: str) -> str:
        try:
            return parse(text)
        except InvalidArgument:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what} id (32 lowercase hex characters)") from None

    check.__name__ = f"{what}_id"  # argparse names the type in its message
    return check


tenant_arg = _id_arg(parse_tenant_id, "tenant")
timeline_arg = _id_arg(parse_timeline_id, "timeline")


def _listing(ids: Sequence[str]) -> str:
    if not ids:
        return "none"
    shown = ", ".join(sorted(ids)[:LISTED_IDS])
    return shown + (f" and {len(ids) - LISTED_IDS} more" if len(ids) > LISTED_IDS else "")


def find_tenant(client: Client, tenant: TenantId) -> timeline_pb2.TenantInfo:
    """The tenant's info; CheckFailed naming the tenants there are when it is unknown."""
    tenants = {t.tenant_id: t for t in client.list_tenants().tenants}
    if tenant in tenants:
        return tenants[tenant]
    for other in tenants:
        if tenant in {tl.timeline_id for tl in client.list_timelines(tenant_id=other).timelines}:
            raise CheckFailed(f"{tenant} is a timeline of tenant {other}, not a tenant (the tenant id comes first)")
    raise CheckFailed(f"no tenant {tenant} on this stack; its tenants: {_listing(list(tenants))} (`strata tenants`)")


def find_timeline(client: Client, tenant: TenantId, timeline: TimelineId) -> timeline_pb2.TimelineInfo:
    """The timeline's info; CheckFailed saying what exists when the tenant or the timeline
    is unknown, or the two ids were given the wrong way round."""
    tenant_ids = {t.tenant_id for t in client.list_tenants().tenants}
    if tenant not in tenant_ids and timeline in tenant_ids:
        if tenant in {tl.timeline_id for tl in client.list_timelines(tenant_id=timeline).timelines}:
            raise CheckFailed(
                f"the ids are swapped: {timeline} is the tenant and {tenant} its timeline (the tenant id comes first)"
            )
    find_tenant(client, tenant)
    timelines = {tl.timeline_id: tl for tl in client.list_timelines(tenant_id=tenant).timelines}
    if timeline in timelines:
        return timelines[timeline]
    if timeline in tenant_ids:
        raise CheckFailed(f"{timeline} is a tenant, not a timeline of tenant {tenant}")
    raise CheckFailed(
        f"tenant {tenant} has no timeline {timeline}; its timelines: {_listing(list(timelines))} "
        f"(`strata timelines {tenant}`)"
    )


def check_branch_point(client: Client, ancestor: timeline_pb2.TimelineInfo, at: Lsn, walservice: bool) -> None:
    """A branch point at or below the ancestor's end (the walservice's flush_lsn when it is
    known, else what the pageserver has ingested), and not below its GC cutoff."""
    end = ancestor.last_record_lsn
    if walservice:
        end = max(end, client.status(tenant_id=ancestor.tenant_id, timeline_id=ancestor.timeline_id).flush_lsn)
    if at > end:
        raise CheckFailed(
            f"--at {at} is past the end of timeline {ancestor.timeline_id} (its last LSN is {end}): "
            "give an LSN at or below it, or leave --at out for its latest"
        )
    if at and at < ancestor.gc_cutoff_lsn:
        raise CheckFailed(
            f"--at {at} is below timeline {ancestor.timeline_id}'s gc cutoff {ancestor.gc_cutoff_lsn}: "
            "history below it is gone; give an LSN at or above it"
        )
