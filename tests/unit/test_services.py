"""deploy/services.py's nginx configuration: the shipped site as-is, and as filled for a run.

Checked by Debian's nginx itself (`nginx -t`, which binds nothing), in a private prefix.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from deploy.services import NGINX_TEMPLATE, ServiceError, nginx_main_render, nginx_site_render

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_accepts(prefix: Path, site: str) -> None:
    (prefix / "portal.conf").write_text(site)
    (prefix / "nginx.conf").write_text(nginx_main_render(prefix))
    result = subprocess.run([NGINX, "-t", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"),
                             "-e", str(prefix / "error.log")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_it_ships_a_site_nginx_takes_as_it_is(tmp_path: Path) -> None:
    nginx_accepts(tmp_path, NGINX_TEMPLATE.read_text())


def test_it_fills_the_marked_lines_for_a_run(tmp_path: Path) -> None:
    site = nginx_site_render(NGINX_TEMPLATE.read_text(), listen="127.0.0.1:18080",
                             nodes=["127.0.0.1:18001", "127.0.0.1:18002"], request_max_bytes=4096,
                             upload_max_bytes=99999, upload_path_prefix="/curators/upload/",
                             media_max_bytes=77777)
    nginx_accepts(tmp_path, site)
    assert "client_max_body_size 77777;" in site
    assert "listen 127.0.0.1:18080;" in site
    assert "listen 80;" not in site
    assert "server 127.0.0.1:18001;" in site
    assert "server 127.0.0.1:18002;" in site
    assert "server 127.0.0.1:8001;" not in site
    assert "client_max_body_size 4096;" in site
    assert "client_max_body_size 99999;" in site
    assert "location ^~ /curators/upload/ {" in site
    # The X-Forwarded-For the node believes is nginx's own, never the client's.
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in site


def test_it_refuses_a_template_with_a_mark_missing() -> None:
    template = NGINX_TEMPLATE.read_text().replace("# @listen", "")
    with pytest.raises(ServiceError, match="listen"):
        nginx_site_render(template, listen="127.0.0.1:1", nodes=["127.0.0.1:2"], request_max_bytes=1,
                          upload_max_bytes=2, upload_path_prefix="/u/")
