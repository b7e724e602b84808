"""What operators read of a node: `/metrics`.

Thin: check who asks, one broker call, respond. The metrics themselves are
`sessions.node.metrics`; the staff's page of live visits is in `sessions.web.admin`.
"""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from portal.errors import json_error
from sessions.node.broker import get_broker
from sessions.node.metrics import address_allowed, metrics_render


@require_GET
async def metrics(request: HttpRequest) -> HttpResponse:
    """This node's metrics in Prometheus' text format, for the configured addresses only."""
    address = request.META.get("REMOTE_ADDR") or ""
    if not address_allowed(address, settings.PORTAL_METRICS_ALLOWED):
        return json_error(403, "forbidden", gettext("Metrics are served to the operators' own addresses "
                                                    "only (PORTAL_METRICS_ALLOWED)."))
    snapshot = await (await get_broker()).metrics_snapshot()
    return HttpResponse(metrics_render(snapshot), content_type=CONTENT_TYPE_LATEST)
