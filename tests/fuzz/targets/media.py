"""Fuzz target: the visitor's files upload, `POST /api/sessions/<id>/media`, and the
names its files get on the floppy.

Each input is a request: its first line is the Content-Type header, the rest the
body (multipart). Each goes two ways:

- through the real ASGI application, to a visit of the requesting browser that
  has ended: Django's middleware parses the form (the CSRF check reads it), the
  view answers 409. Finding: any other answer (500 above all).
- as the view takes the files once a machine runs: Django's request and upload
  handlers (the portal's size limit, files past the memory threshold in
  temporary files) give the files of the field `files`, and
  `sessions.machines.sandbox.dos_names` names them. Findings: an exception but Django's
  own refusals of a malformed request (the ones it answers 400); a DOS name
  that is not a valid 8.3 name of DOS's characters, a device name, or the same
  as another; a temporary file left behind once the request is closed. One in
  eight such inputs (by its CRC) also builds the floppy with mtools
  (`floppy_build`) and lists it back: it must hold exactly those names.

Run: `.venv/bin/python -m tests.fuzz.targets.media [libFuzzer options] [corpus dirs]`.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Any

from tests.fuzz.harness import OracleError, fuzz_main
from tests.fuzz.targets.keys import HOST, KeysTarget, django_instrumented, request_parts

DOS_NAME = re.compile(r"[A-Z0-9!#$%&'()\-@^_`{}~]{1,8}(\.[A-Z0-9!#$%&'()\-@^_`{}~]{1,3})?")
MTOOLS_ENVIRONMENT = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_IGNORE_SHORT_CASE": "1", "MTOOLSRC": "/dev/null"}
# Below Django's default, so that small inputs exercise the temporary-file path too.
MEMORY_THRESHOLD_BYTES = 512


class MediaTarget(KeysTarget):
    name = "media"
    max_length = 16384
    timeout_s = 30
    path_format = "/api/sessions/{id}/media"

    def setup(self) -> None:
        from django.conf import settings

        self.scratch = Path(tempfile.mkdtemp(prefix="portal-fuzz-media-"))
        self.uploads = self.scratch / "uploads"
        self.uploads.mkdir()
        self._restore = {name: getattr(settings, name)
                         for name in ("FILE_UPLOAD_TEMP_DIR", "FILE_UPLOAD_MAX_MEMORY_SIZE")}
        self._tempdir = tempfile.tempdir
        settings.FILE_UPLOAD_TEMP_DIR = os.fspath(self.uploads)
        settings.FILE_UPLOAD_MAX_MEMORY_SIZE = MEMORY_THRESHOLD_BYTES
        # The view writes files held in memory out with tempfile: here too.
        tempfile.tempdir = os.fspath(self.uploads)
        super().setup()

    def teardown(self) -> None:
        from django.conf import settings

        try:
            super().teardown()
        finally:
            for name, value in self._restore.items():
                setattr(settings, name, value)
            tempfile.tempdir = self._tempdir
            shutil.rmtree(self.scratch, ignore_errors=True)

    def case(self, data: bytes) -> None:
        content_type, body = request_parts(data)
        self.errors.errors.clear()
        status, answer = self.loop.run_until_complete(self.post(content_type, body))
        if self.errors.errors:
            raise self.errors.errors[0]
        if status not in {400, 403, 409, 413}:
            raise OracleError(f"unexpected answer {status}: {answer[:200]!r}")
        self._left_check()
        names = self._names(content_type, body, build=zlib.crc32(data) % 8 == 0)
        self._left_check()
        if names is not None:
            self._names_check(*names)

    def _left_check(self) -> None:
        left = sorted(path.name for path in self.uploads.iterdir())
        if left:
            for name in left:
                (self.uploads / name).unlink()
            raise OracleError(f"left behind: {', '.join(left)}")

    def _names(self, content_type: bytes, body: bytes, *, build: bool
               ) -> tuple[list[str], list[str], list[str] | None] | None:
        """(the browser's names, their DOS names, what the floppy holds) as the view makes
        them; None when Django refuses the request."""
        from django.core.exceptions import BadRequest, SuspiciousOperation
        from django.http.multipartparser import MultiPartParserError

        from portal.asgi import django_application
        from sessions.machines.sandbox import dos_names, floppy_build

        scope: dict[str, Any] = {
            "type": "http", "method": "POST", "path": self.path, "query_string": b"", "root_path": "",
            "headers": [(b"host", HOST), (b"content-type", content_type),
                        (b"content-length", str(len(body)).encode())],
        }
        # The portal's handler makes the request, or answers it itself (a header it cannot read).
        request, _refused = django_application.create_request(scope, io.BytesIO(body))
        if request is None:
            return None
        try:
            try:
                files = request.FILES.getlist("files")
            except (MultiPartParserError, BadRequest, SuspiciousOperation):
                return None
            names = [str(upload.name or "FILE") for upload in files]
            dos = dos_names(names)
            held: list[str] | None = None
            if build and files:
                held = self._floppy_names(files, dos, floppy_build)
            return names, dos, held
        finally:
            request.close()

    def _floppy_names(self, files: list[Any], dos: list[str], floppy_build: Any) -> list[str]:
        sources = []
        for index, upload in enumerate(files):
            source = self.scratch / f"file-{index}"
            with source.open("wb") as writer:
                for chunk in upload.chunks():
                    writer.write(chunk)
            sources.append(source)
        image = self.scratch / "floppy.img"
        try:
            floppy_build(image, list(zip(sources, dos, strict=True)))
            listed = subprocess.run(["mdir", "-b", "-a", "-i", os.fspath(image), "::"],
                                    env={**os.environ, **MTOOLS_ENVIRONMENT}, capture_output=True,
                                    check=True, timeout=30)
        finally:
            image.unlink(missing_ok=True)
            for source in sources:
                source.unlink()
        return sorted(line.removeprefix("::/") for line in listed.stdout.decode("latin-1").splitlines()
                      if line.startswith("::/"))

    def _names_check(self, names: list[str], dos: list[str], held: list[str] | None) -> None:
        from sessions.machines.sandbox import DOS_DEVICES

        if len(dos) != len(names):
            raise OracleError(f"DOS names: {len(names)} files got {len(dos)} names")
        if len(set(dos)) != len(dos):
            raise OracleError(f"DOS names: the same name twice: {dos}")
        for name, given in zip(names, dos, strict=True):
            if not DOS_NAME.fullmatch(given):
                raise OracleError(f"DOS names: {given!r} (for {name!r}) is not an 8.3 name")
            if given.split(".")[0] in DOS_DEVICES:
                raise OracleError(f"DOS names: {given!r} (for {name!r}) is a device")
        if held is not None and held != sorted(dos):
            raise OracleError(f"DOS names: the floppy holds {held}, not {sorted(dos)}")


def main() -> None:
    import atheris

    from tests.fuzz.install import private_install

    with atheris.instrument_imports(include=["portal", "sessions"]):
        root = private_install()
        import portal.asgi  # noqa: F401
        import sessions.machines.sandbox  # noqa: F401
    django_instrumented()
    fuzz_main(MediaTarget(private_root=root))


if __name__ == "__main__":
    main()
