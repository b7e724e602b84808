"""The warm pool through the real server: Daphne serving the portal, the prepared
demo, a visitor over HTTP and the display WebSocket."""
from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from typing import Any

from tests.e2e.conftest import PortalFactory
from tests.support.portal_http import PortalVisitor
from tests.support.processes import processes_naming
from tests.support.wait import wait_until


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
        return dict(json.load(response))


def test_a_start_gets_a_pooled_machine_whose_first_picture_is_the_desktop(
    portal_make: PortalFactory,
) -> None:
    site = portal_make({"PORTAL_POOL_SIZE": "1"})
    wait_until(lambda: health(site.url)["pool"]["exhibits"].get("demo") == 1, timeout_s=60,
               what="a pooled demo machine")
    (pooled,) = processes_naming(site.run_dir)
    visitor = PortalVisitor(site.url)
    session = visitor.session_start("demo")

    async def look() -> tuple[int, int, tuple[int, int, int]]:
        rfb = await visitor.display(session["vnc_path"])
        try:
            # The first size and the first picture are the desktop's: no start-up
            # surface of QEMU's before it.
            return rfb.width, rfb.height, rfb.pixel(630, 300)
        finally:
            await rfb.close()

    assert asyncio.run(look()) == (640, 480, (0, 168, 168))
    # The visitor's machine is the one that waited; the pool makes another.
    wait_until(lambda: health(site.url)["pool"]["exhibits"].get("demo") == 1, timeout_s=60,
               what="the pool made up again")
    running = processes_naming(site.run_dir)
    assert pooled in running
    assert len(running) == 2
    # Adopted as it was made: the visit's row names the pooled machine's own directory.
    assert site.machine(session["id"])[0] == pooled
    assert visitor.session_end(session["id"]) == 204
    wait_until(lambda: pooled not in processes_naming(site.run_dir), timeout_s=10,
               what="the visit's machine gone, not pooled again")
    assert health(site.url)["pool"] == {"size": 1, "machines": 1, "exhibits": {"demo": 1}}


def test_after_a_server_crash_the_pool_is_swept_and_made_anew(portal_make: PortalFactory) -> None:
    site = portal_make({"PORTAL_POOL_SIZE": "1"})
    wait_until(lambda: health(site.url)["pool"]["exhibits"].get("demo") == 1, timeout_s=60,
               what="a pooled demo machine")
    (orphan,) = processes_naming(site.run_dir)
    site.crash()
    # Its QEMU outlives the portal (it runs as a user of its own); its lease died with it.
    assert orphan in processes_naming(site.run_dir)
    site.serve()  # answering /healthz means the reaper has swept
    assert orphan not in processes_naming(site.run_dir)
    wait_until(lambda: health(site.url)["pool"]["exhibits"].get("demo") == 1, timeout_s=60,
               what="the pool made anew")
    (fresh,) = processes_naming(site.run_dir)
    assert fresh != orphan
    # The orphan's run directory went with it: only the new pooled machine's is there.
    left = [path.name for path in site.run_dir.iterdir()]
    assert len(left) == 1, left
    assert re.fullmatch(r"m-[0-9a-f]{16}", left[0]), left
