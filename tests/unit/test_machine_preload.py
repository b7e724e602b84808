"""The exhibit page preloads every module the machine's page runs (its module scripts,
in the templates it includes, and what they import of the portal's own), so a start
in place runs them without fetching one (templates/portal/machine_preload.html)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates" / "portal"
STATIC = REPO / "static" / "portal"
MODULE_SCRIPT = re.compile(r"""<script type="module" src="\{% static 'portal/([\w.-]+\.js)' %\}">""")
INCLUDE = re.compile(r"""\{% include "portal/([\w.-]+\.html)\"""")
IMPORT = re.compile(r"""^import\b[^;]*?["']\./([\w.-]+\.js)["']""", re.MULTILINE)
PRELOAD = re.compile(r"""<link rel="modulepreload" href="\{% static 'portal/([\w.-]+\.js)' %\}">""")


def _page_modules(template: str) -> set[str]:
    text = (TEMPLATES / template).read_text()
    modules = set(MODULE_SCRIPT.findall(text))
    for included in INCLUDE.findall(text):
        modules |= _page_modules(included)
    return modules


def _with_imports(modules: set[str]) -> set[str]:
    found, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module not in found:
            found.add(module)
            todo.extend(IMPORT.findall((STATIC / module).read_text()))
    return found


def test_the_exhibit_page_preloads_every_module_of_the_machines_page() -> None:
    needed = _with_imports(_page_modules("session.html"))
    assert {"session.js", "keyboard.js", "screen-text.js", "csrf.js"} <= needed
    preloaded = set(PRELOAD.findall((TEMPLATES / "machine_preload.html").read_text()))
    assert needed - preloaded == set(), "add them to templates/portal/machine_preload.html"
    # Nothing preloaded that the machine's page no longer runs.
    assert preloaded - needed == set()


def test_both_start_pages_include_the_preloads() -> None:
    for template in ("exhibit_detail.html", "embed.html"):
        assert '{% include "portal/machine_preload.html" %}' in (TEMPLATES / template).read_text()
