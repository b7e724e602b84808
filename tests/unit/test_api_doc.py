"""docs/api.md names every route, WebSocket path, close code and management command
the code has, and none the code does not.

What the code has is read from the running configuration, never from file paths,
so moving a module between packages changes nothing here:

- HTTP routes: Django's resolver, walked through every include. A route is the
  portal's when its view is defined in the portal's own packages (`own_packages`);
  that rule leaves out Django's admin internals (Django's own views under /admin/)
  and keeps the pages the portal adds to the admin. Static files are served by the
  ASGI handler under STATIC_URL, outside the resolver, so they are never a route.
- Methods: what the view's `require_http_methods` allows; a view without it is
  compared by path only.
- WebSocket routes: every URLRouter reached from the ASGI application.
- Close codes: in every module of the portal's packages, module-level integers named
  CLOSE_* and the codes given where a socket is closed (`close_codes_in`).
- Management commands: Django's, those of the portal's own apps.

The document's side: a route is a bullet that starts with `METHOD /path` in
backticks (WS for a WebSocket; after an *(extension)* mark, if any), a close code a
table row that starts with the code in backticks, a command a bullet that starts with
`manage.py name` in backticks.
"""
from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import pkgutil
import re
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

import pytest
from channels.routing import URLRouter
from django.core.management import get_commands
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern, RoutePattern

from tests.conftest import REPO

DOC = REPO / "docs" / "api.md"
# Route parameters as the document names them; any other keeps its own name.
PARAMETER_NAMES = {"session_id": "id", "checkpoint_id": "cid", "print_id": "pid", "recording_id": "id",
                   "number": "n"}
# How the document writes a WebSocket route that takes every path the others do not.
ANY_OTHER_PATH = "<any other path>"
# Every code a close frame may carry (RFC 6455, 7.4); outside it a number is no close code.
CLOSE_CODE_RANGE = range(1000, 5000)
# Calls that close a socket: consumers' `close`/`close_with`, aiohttp's `close(code=…)`,
# autobahn's `sendCloseFrame`.
CLOSING_CALLS = {"close", "close_with", "sendCloseFrame"}

DOC_ROUTE = re.compile(r"^\s*- (?:\*\([^)]*\)\* )?`(GET|POST|PUT|PATCH|DELETE|WS) (/[^`]*)`", re.MULTILINE)
DOC_CLOSE_CODE = re.compile(r"^\| `(\d{4})` \|", re.MULTILINE)
DOC_COMMAND = re.compile(r"^\s*- (?:\*\([^)]*\)\* )?`manage\.py (\w+)", re.MULTILINE)


# --- the code's side -----------------------------------------------------------------

def http_patterns() -> Iterator[tuple[list[Any], URLPattern]]:
    """Every URL pattern with the patterns of the includes above it, outermost first."""
    def walk(patterns: Iterable[Any], above: list[Any]) -> Iterator[tuple[list[Any], URLPattern]]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, [*above, pattern.pattern])
            else:
                yield [*above, pattern.pattern], pattern

    yield from walk(get_resolver().url_patterns, [])


def asgi_layers() -> Iterator[Any]:
    """The ASGI application and every application it wraps (relay, protocol router,
    middleware, URLRouters)."""
    from portal.asgi import application

    seen: set[int] = set()
    waiting: list[Any] = [application]
    while waiting:
        layer = waiting.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        for attribute in ("application", "application_mapping", "inner", "app"):
            inner = getattr(layer, attribute, None)
            if isinstance(inner, dict):
                waiting.extend(inner.values())
            elif inner is not None:
                waiting.append(inner)


def websocket_patterns() -> Iterator[tuple[list[Any], Any]]:
    """Every WebSocket route (with the patterns above it) and its consumer class."""
    def walk(router: URLRouter, above: list[Any]) -> Iterator[tuple[list[Any], Any]]:
        for route in router.routes:
            if isinstance(route.callback, URLRouter):
                yield from walk(route.callback, [*above, route.pattern])
            else:
                yield [*above, route.pattern], getattr(route.callback, "consumer_class", route.callback)

    routers = [layer for layer in asgi_layers() if isinstance(layer, URLRouter)]
    assert routers, "no URLRouter in the ASGI application"
    for router in routers:
        yield from walk(router, [])


def own_packages() -> set[str]:
    """The portal's top-level packages: those of the views, consumers and ASGI layers
    that no installed distribution (Django, Channels, Daphne…) provides."""
    modules = {pattern.callback.__module__ for _, pattern in http_patterns()}
    modules |= {consumer.__module__ for _, consumer in websocket_patterns()}
    modules |= {type(layer).__module__ for layer in asgi_layers()}
    installed = set(importlib.metadata.packages_distributions())
    packages = {module.split(".")[0] for module in modules} - installed
    assert packages, "found none of the portal's own packages"
    return packages


def own_modules() -> Iterator[ModuleType]:
    for top in sorted(own_packages()):
        package = importlib.import_module(top)
        yield package
        for found in pkgutil.walk_packages(package.__path__, f"{top}."):
            yield importlib.import_module(found.name)


def _parameter(match: re.Match[str]) -> str:
    return f"<{PARAMETER_NAMES.get(match[1], match[1])}>"


def route_render(patterns: list[Any]) -> str:
    """A route as the document writes it: `/api/sessions/<id>/reset`."""
    parts = []
    for pattern in patterns:
        if isinstance(pattern, RoutePattern):
            parts.append(re.sub(r"<(?:\w+:)?(\w+)>", _parameter, str(pattern)))
        elif isinstance(pattern, RegexPattern):
            parts.append(regex_render(str(pattern)))
        else:
            raise AssertionError(f"a URL pattern of an unknown kind: {pattern!r}")
    return "/" + "".join(parts)


def regex_render(regex: str) -> str:
    if regex in {"", "^"}:
        return ANY_OTHER_PATH
    body = re.sub(r"\(\?P<(\w+)>[^()]*\)", _parameter, regex.removeprefix("^").removesuffix("$"))
    assert not re.search(r"(?<!\\)[\\^$.*+?()\[\]{}|]", body), \
        f"cannot write the pattern {regex!r} as a path; teach regex_render its form"
    return re.sub(r"\\(.)", r"\1", body)


def view_methods(view: Any) -> frozenset[str] | None:
    """The methods `require_http_methods` lets through to the view; None without it."""
    layer = view
    while layer is not None:
        try:
            allowed = inspect.getclosurevars(layer).nonlocals.get("request_method_list")
        except TypeError:
            allowed = None
        if allowed is not None:
            return frozenset(allowed)
        layer = getattr(layer, "__wrapped__", None)
    return None


def code_http_routes() -> dict[str, frozenset[str] | None]:
    """The portal's HTTP routes and their methods (None: not declared on the view)."""
    packages = own_packages()
    routes: dict[str, frozenset[str] | None] = {}
    for patterns, pattern in http_patterns():
        if pattern.callback.__module__.split(".")[0] in packages:
            routes[route_render(patterns)] = view_methods(pattern.callback)
    return routes


def code_websocket_routes() -> set[str]:
    return {route_render(patterns) for patterns, _ in websocket_patterns()}


def _close_code_expressions(node: ast.AST) -> Iterator[ast.expr]:
    """The expressions that give a close code at this node of a module's syntax tree."""
    if isinstance(node, ast.Call):
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        if name in CLOSING_CALLS:
            keywords = [keyword.value for keyword in node.keywords if keyword.arg == "code"]
            yield from keywords or node.args[:1]
    elif isinstance(node, ast.Dict):
        fields = {key.value: value for key, value in zip(node.keys, node.values, strict=True)
                  if isinstance(key, ast.Constant) and isinstance(key.value, str)}
        kind = fields.get("type")
        if isinstance(kind, ast.Constant) and kind.value == "websocket.close" and "code" in fields:
            yield fields["code"]
    elif isinstance(node, ast.Assign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if node.value is not None and any(isinstance(target, ast.Name) and target.id == "code"
                                          for target in targets):
            yield node.value


def _codes_given(expression: ast.AST, module: ModuleType) -> Iterator[int]:
    """The close codes an expression may give: its numbers and the module's integer
    constants it names, leaving out comparisons (`code == 1005` gives no 1005)."""
    if isinstance(expression, ast.Compare):
        return
    value: Any = None
    if isinstance(expression, ast.Constant):
        value = expression.value
    elif isinstance(expression, ast.Name):
        value = vars(module).get(expression.id)
    if type(value) is int and value in CLOSE_CODE_RANGE:
        yield value
    for child in ast.iter_child_nodes(expression):
        yield from _codes_given(child, module)


def close_codes_in(module: ModuleType) -> set[int]:
    """The close codes a module defines (CLOSE_* integers) or gives where it closes a socket."""
    codes = {value for name, value in vars(module).items()
             if name.startswith("CLOSE_") and type(value) is int and value in CLOSE_CODE_RANGE}
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return codes
    for node in ast.walk(ast.parse(source)):
        for expression in _close_code_expressions(node):
            codes.update(_codes_given(expression, module))
    return codes


def code_close_codes() -> dict[int, set[str]]:
    """Every close code and the modules it is in."""
    found: dict[int, set[str]] = {}
    for module in own_modules():
        for code in close_codes_in(module):
            found.setdefault(code, set()).add(module.__name__)
    return found


def code_commands() -> set[str]:
    packages = own_packages()
    return {name for name, app in get_commands().items() if app.split(".")[0] in packages}


# --- the document's side ---------------------------------------------------------------

def doc_routes() -> dict[str, set[str]]:
    """Every route the document declares, with its methods (WS for a WebSocket)."""
    routes: dict[str, set[str]] = {}
    for method, path in DOC_ROUTE.findall(DOC.read_text()):
        routes.setdefault(path, set()).add(method)
    return routes


def doc_http_routes() -> dict[str, set[str]]:
    return {path: methods - {"WS"} for path, methods in doc_routes().items() if methods - {"WS"}}


def doc_websocket_routes() -> set[str]:
    return {path for path, methods in doc_routes().items() if "WS" in methods}


# --- the comparisons ---------------------------------------------------------------------

def both_ways(in_code: Iterable[Any], in_doc: Iterable[Any], what: str) -> None:
    code, doc = set(in_code), set(in_doc)
    problems = []
    if code - doc:
        problems.append(f"{what} in the code but not in docs/api.md: {sorted(code - doc)}")
    if doc - code:
        problems.append(f"{what} in docs/api.md but not in the code: {sorted(doc - code)}")
    assert not problems, "\n".join(problems)


def test_it_documents_every_http_route_and_no_other() -> None:
    both_ways(code_http_routes(), doc_http_routes(), "HTTP routes")


def test_it_documents_each_http_route_with_the_methods_its_view_takes() -> None:
    documented = doc_http_routes()
    wrong = {path: f"the view takes {sorted(methods)}, the document says {sorted(documented[path])}"
             for path, methods in code_http_routes().items()
             if methods is not None and path in documented and set(methods) != documented[path]}
    assert not wrong, f"methods differ: {wrong}"


def test_it_documents_every_websocket_route_and_no_other() -> None:
    both_ways(code_websocket_routes(), doc_websocket_routes(), "WebSocket routes")


def test_it_documents_every_close_code_and_no_other() -> None:
    found = code_close_codes()
    documented = {int(code) for code in DOC_CLOSE_CODE.findall(DOC.read_text())}
    missing = {code: sorted(modules) for code, modules in found.items() if code not in documented}
    assert not missing, f"close codes in the code (and where) but not in docs/api.md's table: {missing}"
    stale = sorted(documented - set(found))
    assert not stale, f"close codes in docs/api.md's table but not in the code: {stale}"


def test_it_documents_every_management_command_and_no_other() -> None:
    both_ways(code_commands(), DOC_COMMAND.findall(DOC.read_text()), "management commands")


# --- the rules themselves ----------------------------------------------------------------

def test_it_leaves_out_djangos_admin_but_keeps_the_portals_admin_pages() -> None:
    routes = code_http_routes()
    assert "/admin/login/" not in routes
    assert "/admin/visits/visitorsession/live/" in routes
    assert routes["/api/sessions/<id>"] == frozenset({"GET", "DELETE"})


@pytest.mark.parametrize(("source", "codes"), [
    ("await self.close_with(CLOSE_X)", {4999}),
    ("self.close_with(message.get('code') or 1000, '')", {1000}),
    ("await holder.close(code=1001)", {1001}),
    ("await send({'type': 'websocket.close', 'code': 1011})", {1011}),
    ("code = 1000 if code == 1005 else 1001", {1000, 1001}),
    ("EVENTS_MAX_MESSAGE_BYTES = 4096\nhandle.read(4096)", set()),
])
def test_it_finds_close_codes_where_sockets_are_closed(source: str, codes: set[int]) -> None:
    module = ModuleType("example")
    module.CLOSE_X = 4999  # type: ignore[attr-defined]
    found = {code for node in ast.walk(ast.parse(source))
             for expression in _close_code_expressions(node)
             for code in _codes_given(expression, module)}
    assert found == codes
