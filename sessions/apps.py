from __future__ import annotations

from django.apps import AppConfig


class VisitorSessionsConfig(AppConfig):
    # Django's own django.contrib.sessions already uses the label "sessions".
    name = "sessions"
    label = "visits"
    verbose_name = "Visitor sessions"

    def ready(self) -> None:
        # The catalogue's pages reach the runtime through this slot, so `portal`
        # never imports `sessions`. Nothing starts here: the broker is made on
        # first use, inside the running event loop.
        from portal.runtime import Runtime, runtime_register, runtime_shutdown_register
        from sessions.node.broker import broker_shutdown_if_made, get_broker

        async def catalogue_runtime() -> Runtime:
            return (await get_broker()).catalogue

        runtime_register(catalogue_runtime)
        runtime_shutdown_register(broker_shutdown_if_made)
