"""Every module imports on its own, no two modules import each other, and the daemon needs no Django.

Each module of the project's packages is imported first in a fresh interpreter (a circle that
breaks at import time fails there; Django's modules after `django.setup()`, as every entry point
does), and the import graph (function-level imports included, so an import hidden in a function
to dodge a circle is still a circle) must have no cycle. Modules are found by their files, so new
ones are checked without editing this test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vmbackend", "orders", "store", "accounts", "warren", "warrencli")
DJANGO_PACKAGES = ("orders", "store", "accounts")  # their modules need the app registry


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__main__.py" or "migrations" in path.parts:  # runs the CLI / Django's
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere (top level or inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:
                    out.add(sub)
                elif node.module in modules:
                    out.add(node.module)
    return out


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # A module needs its packages (and a top-level package's __init__ imports nothing): no circle.
    return {
        name: {dep for dep in deps if not name.startswith(dep + ".") and dep not in PACKAGES}
        for name, deps in graph.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


# Which package may import which: one row per area, the areas each may use besides itself (a
# module belongs to the area of the longest key that prefixes its name). Function-level imports
# count. Lower areas never import higher ones: the shop sees only vmbackend's protocol, the
# protocol nothing of Warren, and inside `orders` each area only those listed below it.
# (The rows are filled in by the layout; docs/architecture.md draws the same table.)
VM_LAYERS: dict[str, set[str]] = {
    "vmbackend": set(),  # the package's own __init__
    "vmbackend.protocol": set(),  # the contract with the shop: nothing of Warren
    "vmbackend.files": set(),  # atomic writes, shared by every layer below the CLI
    "vmbackend.tls": {"vmbackend.files"},
    "vmbackend.images": {"vmbackend.protocol", "vmbackend.files"},
    "vmbackend.machine": {"vmbackend.protocol", "vmbackend.images", "vmbackend.files"},
    "vmbackend.host": {
        "vmbackend.protocol",
        "vmbackend.files",
        "vmbackend.tls",
        "vmbackend.images",
        "vmbackend.machine",
    },
    "vmbackend.client": {"vmbackend.protocol"},  # the operator's side of the broker
    "vmbackend.images_cli": {"vmbackend.images", "vmbackend.machine"},
    "vmbackend.cli": {
        "vmbackend.protocol",  # broker users (`broker add-host`)
        "vmbackend.files",
        "vmbackend.client",
        "vmbackend.host",
        "vmbackend.images_cli",
        "vmbackend.tls",
    },
}

# The shop. `orders` is one Django app in areas, from the bottom up (docs/orders.md, "Layout"):
# lib < models < core < billing, fleet, monitoring (side by side) < console < messaging < web,
# api, admin, management (side by side). `orders` itself (apps, checks) uses lib only.
_ORDERS_BASE = {"orders.lib", "orders.models", "orders.core", "store", "vmbackend.protocol"}
_ORDERS_SERVICES = _ORDERS_BASE | {"orders.billing", "orders.fleet", "orders.monitoring"}
_ORDERS_WORKERS = _ORDERS_SERVICES | {"orders.console", "orders.messaging"}

SHOP_LAYERS: dict[str, set[str]] = {
    "store": {"vmbackend.protocol"},  # the shop sees only the protocol of vmbackend
    "accounts": set(),
    "orders": {"orders.lib"},
    "orders.lib": set(),
    "orders.models": {"orders.lib"},
    "orders.core": {"orders.lib", "orders.models", "store", "vmbackend.protocol"},
    "orders.billing": _ORDERS_BASE,
    "orders.fleet": _ORDERS_BASE,
    "orders.monitoring": _ORDERS_BASE,
    "orders.console": _ORDERS_BASE | {"orders.billing"},
    "orders.messaging": _ORDERS_SERVICES | {"orders.console"},
    "orders.web": _ORDERS_WORKERS,
    "orders.admin": _ORDERS_WORKERS,
    "orders.management": _ORDERS_WORKERS,
    # The customer API and its token page: beside web, over the same services.
    "orders.api": _ORDERS_WORKERS,
    # `warren run` sets a development host up: the default host id (host.config), its CA (tls).
    "warren": {"vmbackend.protocol", "vmbackend.host", "vmbackend.tls"},
    # The customers' CLI talks to the API over HTTP: nothing of Warren (see the test below).
    "warrencli": set(),
}

LAYERS: dict[str, set[str]] = {**VM_LAYERS, **SHOP_LAYERS}


def _area(name: str, layers: dict[str, set[str]]) -> str | None:
    best = None
    for key in layers:
        if (name == key or name.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best


def _allowed(src_area: str, dst: str, layers: dict[str, set[str]]) -> bool:
    dst_area = _area(dst, layers)
    if dst_area is None:
        return False
    if dst_area == src_area:
        return True
    return any(dst_area == ok or dst_area.startswith(ok + ".") for ok in layers[src_area])


def _violations(graph: dict[str, set[str]], layers: dict[str, set[str]]) -> list[str]:
    out = []
    for name, deps in sorted(graph.items()):
        area = _area(name, layers)
        if area is None:
            out.append(f"{name}: in no area of the table")
            continue
        out += [f"{name} -> {dep}" for dep in sorted(deps) if not _allowed(area, dep, layers)]
    return out


def test_every_import_follows_the_layer_table():
    assert _violations(_graph(_modules()), LAYERS) == []


def test_a_planted_upward_import_is_refused(tmp_path):
    """The table bites: a lower area's module that imports a higher one, even inside a function."""
    modules = _modules()
    graph = _graph(modules)
    low, high = _lowest_and_highest(graph)
    planted = tmp_path / "planted.py"
    source = modules[low].read_text()
    planted.write_text(source + f"\n\ndef _planted() -> None:\n    import {high}  # noqa\n")
    graph[low] = _imports(planted, modules) - {low}
    assert _violations(graph, LAYERS) == [f"{low} -> {high}"]


def test_inside_orders_a_planted_upward_import_is_refused(tmp_path):
    """The same inside the app: provisioning (core) calling up into billing is refused."""
    modules = _modules()
    graph = _graph(modules)
    low, high = "orders.core.provisioning", "orders.billing.cancellation"
    planted = tmp_path / "planted.py"
    planted.write_text(
        modules[low].read_text() + f"\n\ndef _planted() -> None:\n    import {high}\n"
    )
    graph[low] = _imports(planted, modules) - {low}
    assert _violations(graph, LAYERS) == [f"{low} -> {high}"]


def _lowest_and_highest(graph: dict[str, set[str]]) -> tuple[str, str]:
    """A module of an area that may import nothing else, and one of an area that nobody may use."""
    used = {ok for oks in LAYERS.values() for ok in oks}
    low = next(n for n in sorted(graph) if (a := _area(n, LAYERS)) and not LAYERS[a] and a != n)
    high = next(
        n
        for n in sorted(graph)
        if (a := _area(n, LAYERS))
        and a not in used
        and a != n
        and not _allowed(_area(low, LAYERS) or "", n, LAYERS)
    )
    return low, high


def test_the_module_list_is_complete():
    modules = _modules()
    for name in (
        "vmbackend",
        "vmbackend.protocol.messages",
        "vmbackend.machine",
        "vmbackend.machine.qemu_machine",
        "vmbackend.machine.saved_state",
        "vmbackend.machine.snapshot",
        "vmbackend.machine.management_api",
        "vmbackend.tls.authority",
        "vmbackend.host.daemon",
        "vmbackend.host.sampler",
        "vmbackend.files",
        "orders.models",
        "orders.models.instances",
        "orders.lib.encryption",
        "orders.core.provisioning",
        "orders.billing.webhooks",
        "orders.fleet.placement",
        "orders.fleet.waitlist",
        "orders.monitoring.metrics",
        "orders.console.commands",
        "orders.messaging.consumer",
        "orders.web.catalogue",
        "orders.admin.base",
        "orders.checks",
        "orders.management.commands.relay_outbox",
        "store.settings",
        "store.templatetags.money",
        "accounts.views",
        "warren.run",
    ):
        assert name in modules
    assert not [name for name in modules if ".migrations" in name or name.endswith("__main__")]


def test_no_module_imports_itself_through_others():
    cycle = _cycle(_graph(_modules()))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_daemon_imports_nothing_of_the_shop():
    """vmbackend runs on hosts without Django or the shop's code; the shop may use vmbackend."""
    modules = _modules()
    graph = _graph(modules)
    shop = [
        f"{name} -> {dep}"
        for name, deps in graph.items()
        if name.startswith("vmbackend")
        for dep in deps
        if not dep.startswith("vmbackend")
    ]
    assert shop == []
    uses_django = [
        name
        for name, path in modules.items()
        if name.startswith("vmbackend") and "django" in _top_level_names(path)
    ]
    assert uses_django == []


def test_the_cli_imports_only_the_standard_library():
    """`pip install .` gives customers warrencli alone, with no dependencies: anything else it
    imported would be missing there."""
    modules = _modules()
    outside = {
        f"{name}: {top}"
        for name, path in modules.items()
        if name.startswith("warrencli")
        for top in _top_level_names(path)
        if top not in sys.stdlib_module_names and top not in ("warrencli", "__future__")
    }
    assert outside == set()
    assert any(name.startswith("warrencli.") for name in modules)


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


# Imports each module named in argv first, each in a child forked from this interpreter before it
# imported anything of the project (with `django`, right after django.setup(), which every Django
# entry point runs first). Forking costs milliseconds where a new interpreter per module costs
# most of a second (Django's setup each time); the child sees exactly what a fresh one would.
_IMPORT_EACH = """
import importlib, os, sys, traceback
if sys.argv[1] == "django":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "store.settings")
    import django
    django.setup()
for name in sys.argv[2:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            print(name + ": " + traceback.format_exc().strip().splitlines()[-1], flush=True)
            os._exit(1)
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    modules = sorted(_modules())
    django = [name for name in modules if name.split(".")[0] in DJANGO_PACKAGES]
    plain = [name for name in modules if name not in django]
    failed = []
    for kind, names in (("plain", plain), ("django", django)):
        done = subprocess.run(
            [sys.executable, "-c", _IMPORT_EACH, kind, *names],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        failed += done.stdout.splitlines()
    assert failed == []


def test_a_module_that_fails_to_import_is_reported(tmp_path):
    (tmp_path / "broken_mod.py").write_text("import nowhere_to_be_found\n")
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, "plain", "json", "broken_mod"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.splitlines() == [
        "broken_mod: ModuleNotFoundError: No module named 'nowhere_to_be_found'"
    ]
