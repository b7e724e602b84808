"""Fuzz target: the keys API, `POST /api/sessions/<id>/keys`, through the real ASGI
application (the relay, Django's middleware with its CSRF check, the view).

Each input is a request: its first line is the Content-Type header, the rest the
body. The visit belongs to the requesting browser and has ended, so everything
the view reads is parsed and checked and nothing is typed: a body the view
accepts answers 409 ("this machine has ended"), one it refuses 400 with the
API's JSON error. Findings: any other answer, 500 above all (the exception
Django logged is the finding), or an error that is not the API's JSON shape.

Run: `.venv/bin/python -m tests.fuzz.targets.keys [libFuzzer options] [corpus dirs]`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
from pathlib import Path
from typing import Any

from tests.fuzz.harness import OracleError, functions_instrumented, fuzz_main

# What the view or Django may answer a well-formed request from the visit's owner.
ANSWERS = {204, 400, 403, 409, 413, 415}
HOST = b"localhost"


def request_parts(data: bytes) -> tuple[bytes, bytes]:
    """(Content-Type, body): the input's first line and the rest."""
    content_type, _, body = data.partition(b"\n")
    return content_type[:500], body


class LoggedErrors(logging.Handler):
    """The exceptions Django logs for a 500, kept for the finding."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


class KeysTarget:
    name = "keys"
    max_length = 8192
    timeout_s = 20
    rss_limit_mb = 2048
    path_format = "/api/sessions/{id}/keys"

    def __init__(self, *, private_root: Path | None = None) -> None:
        # Removed at teardown: the private install a harness run alone made.
        self.private_root = private_root
        self.errors = LoggedErrors()

    def setup(self) -> None:
        from django.conf import settings
        from django.contrib.sessions.backends.signed_cookies import SessionStore

        from portal.asgi import application
        from portal.models import DiskImage, Exhibit
        from portal.visitor import VISITOR_KEY
        from sessions.models import VisitorSession

        self.application = application
        owner = secrets.token_urlsafe(24)
        image = DiskImage.objects.create(sha256=secrets.token_hex(32), path="/nonexistent/fuzz.qcow2",
                                         size_bytes=1)
        exhibit = Exhibit.objects.create(slug=f"fuzz-{secrets.token_hex(4)}", title="Fuzz", image=image)
        visit = VisitorSession.objects.create(exhibit=exhibit, owner=owner,
                                              state=VisitorSession.State.ENDED)
        self.path = self.path_format.format(id=visit.id)
        store = SessionStore()
        store[VISITOR_KEY] = owner
        store.save()
        self.csrf_token = secrets.token_hex(16)
        self.cookie = (f"{settings.SESSION_COOKIE_NAME}={store.session_key}; "
                       f"{settings.CSRF_COOKIE_NAME}={self.csrf_token}").encode()
        self.loop = asyncio.new_event_loop()
        requests = logging.getLogger("django.request")
        self._propagated = requests.propagate
        requests.addHandler(self.errors)
        requests.propagate = False  # the findings say it; the log would say it thousands of times
        status, _body = self.loop.run_until_complete(self.post(b"application/json", b'{"text": "a"}'))
        if status != 409:
            raise RuntimeError(f"the ended visit should answer 409, not {status}")

    def teardown(self) -> None:
        from sessions.node.broker import get_broker

        requests = logging.getLogger("django.request")
        requests.removeHandler(self.errors)
        requests.propagate = self._propagated

        async def stop() -> None:
            await (await get_broker()).shutdown()

        self.loop.run_until_complete(stop())
        self.loop.close()
        if self.private_root is not None:
            shutil.rmtree(self.private_root, ignore_errors=True)

    async def post(self, content_type: bytes, body: bytes) -> tuple[int, bytes]:
        """The request through the ASGI application, as Daphne hands it over."""
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": self.path, "raw_path": self.path.encode(), "query_string": b"",
            "root_path": "", "client": ("127.0.0.1", 40000), "server": ("localhost", 8000),
            "headers": [(b"host", HOST), (b"content-type", content_type),
                        (b"content-length", str(len(body)).encode()), (b"cookie", self.cookie),
                        (b"x-csrftoken", self.csrf_token.encode())],
        }
        sent = False
        answer: dict[str, Any] = {"status": 0, "body": b""}

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the browser stays until the answer
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["body"] += message.get("body", b"")

        async with asyncio.timeout(self.timeout_s / 2):
            await self.application(scope, receive, send)
        return answer["status"], answer["body"]

    def case(self, data: bytes) -> None:
        content_type, body = request_parts(data)
        self.errors.errors.clear()
        status, answer = self.loop.run_until_complete(self.post(content_type, body))
        if self.errors.errors:
            raise self.errors.errors[0]
        if status not in ANSWERS:
            raise OracleError(f"unexpected answer {status}: {answer[:200]!r}")
        if status in {400, 409}:
            try:
                said = json.loads(answer)
            except ValueError as error:
                raise OracleError(f"an error that is not JSON ({status}): {answer[:200]!r}") from error
            if not (isinstance(said, dict) and isinstance(said.get("error"), str)
                    and isinstance(said.get("detail"), str) and said["detail"]):
                raise OracleError(f"an error without the API's shape ({status}): {answer[:200]!r}")


def django_instrumented() -> None:
    """Coverage in the parts of Django that read a request's body and headers."""
    from django.http import multipartparser, request
    from django.middleware import csrf
    from django.utils import http

    functions_instrumented(multipartparser.MultiPartParser, ["__init__", "parse", "handle_file_complete"])
    functions_instrumented(multipartparser, ["parse_boundary_stream"])
    functions_instrumented(multipartparser.BoundaryIter, ["__next__", "_find_boundary"])
    functions_instrumented(request.HttpRequest, ["_load_post_and_files", "_set_content_type_params"])
    functions_instrumented(http, ["parse_header_parameters"])
    functions_instrumented(csrf.CsrfViewMiddleware, ["process_view"])


def main() -> None:
    import atheris

    from tests.fuzz.install import private_install

    with atheris.instrument_imports(include=["portal", "sessions"]):
        root = private_install()
        import portal.asgi  # noqa: F401
    django_instrumented()
    fuzz_main(KeysTarget(private_root=root))


if __name__ == "__main__":
    main()
