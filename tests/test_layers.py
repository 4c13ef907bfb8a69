"""The package layout is a tree of allowed imports (docs/architecture.md): read every import of
the repo's packages with `ast`, those inside functions included, and check that each package
imports only the packages it is allowed to, that the core imports no transport server, queue or
trainer library, that a package this test does not know fails it, and that no modules import
each other in a loop, whether at import time or from inside a function."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "dermserve"
"""The one installed package: its subpackages are the layers below; devtools sits beside it."""

ALLOWED: dict[str, set[str]] = {
    "dermserve": set(),
    "v1": set(),
    "core": set(),
    "batch": {"core"},
    "protocol": {"core", "batch", "v1"},
    "client": {"core", "protocol", "v1"},
    "trainer": {"core"},
    "worker": {"core", "batch"},
    "service": {"core", "protocol", "batch", "v1"},
    "cli": {"core", "protocol", "client", "batch", "v1"},
    "web": {"core", "protocol", "client", "v1"},
    "devtools": {"core", "protocol", "client", "batch", "trainer", "worker", "service", "cli",
                 "web", "v1"},
}
"""Layer -> the layers it may import. The layers are dermserve's subpackages (the namespace's
own `__init__` is "dermserve") and devtools, which is not installed. The stubs (v1) and the
transport-free core are at the bottom; the batch domain on the core; protocol (proto <-> domain)
on both; the client connection on protocol; the front, the worker and the trainer on what they
serve; the CLI and the web page on the client side only. Only the checkout's dev tools see
everything."""
CLIENT_FORBIDDEN = ("dermserve.batch.jobs", "dermserve.batch.store", "dermserve.batch.queues")
"""The Redis side of the batch domain: a client (cli, web, client) reads a job's results and
manifests with the pure batch modules (records, references, results), never the queue."""
CORE_FORBIDDEN = {"rq", "redis", "grpc_health", "grpc_reflection", "starlette", "uvicorn",
                  "keras", "matplotlib"}
"""What would tie the core to one edge: queues, Redis, gRPC, the web server, the trainer's
libraries (TensorFlow itself is the model runtime the backends load)."""
NOT_PACKAGES = {"tests", "protos", "deploy", "docs", "models", "bench-results", "var", "build"}


def top_level_packages() -> list[str]:
    """Every top-level Python package of the checkout (a folder with `__init__.py`)."""
    return sorted(path.parent.name for path in ROOT.glob("*/__init__.py")
                  if path.parent.name not in NOT_PACKAGES)


def packages() -> list[str]:
    """The layers: dermserve's subpackages, the namespace itself, and every other top-level
    package of the checkout (devtools; a second installed namespace would show up here)."""
    inside = [path.parent.name for path in (ROOT / NAMESPACE).glob("*/__init__.py")]
    return sorted({*inside, *top_level_packages()})


def layer_of(name: str) -> str | None:
    """The layer of a module name, None for a module from outside the checkout."""
    first, _, rest = name.partition(".")
    if first == NAMESPACE:
        return rest.partition(".")[0] or NAMESPACE
    return first if first in top_level_packages() else None


def modules() -> Iterator[tuple[str, Path]]:
    for package in top_level_packages():
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def imported(path: Path, module: str, top_level_only: bool = False) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_every_package_is_known() -> None:
    """A new package must say what it may import: it is not silently skipped."""
    assert set(packages()) - set(ALLOWED) == set()


def test_one_installed_namespace() -> None:
    """Everything installed is under dermserve/: no generic top-level package (a `core` or a
    `cli` would collide with other distributions in site-packages); devtools is never installed."""
    assert top_level_packages() == [NAMESPACE, "devtools"]


def layer_violations() -> list[str]:
    found = []
    for module, path in modules():
        own = layer_of(module)
        assert own is not None
        for name in sorted(imported(path, module)):
            other = layer_of(name)
            if other == own or other == NAMESPACE:
                continue
            if other is not None and other not in ALLOWED[own]:
                found.append(f"{module} imports {name} ({own} may not import {other})")
            if own in {"cli", "web", "client", "protocol"} and name.startswith(CLIENT_FORBIDDEN):
                found.append(f"{module} imports {name}: a client never reaches Redis")
            if own == "core" and name.partition(".")[0] in CORE_FORBIDDEN:
                found.append(f"{module} imports {name}: the core stays transport-free")
    return found


def test_every_package_imports_only_what_it_may() -> None:
    assert layer_violations() == []


def test_the_layer_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    """The check itself works: a function-level import of the front by a client is seen."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from dermserve.service.server import serve\n", encoding="utf-8")
    assert "dermserve.service.server" in imported(probe, "dermserve.cli.probe")
    assert layer_of("dermserve.service.server") not in ALLOWED["cli"]


def module_graph(top_level_only: bool = False) -> dict[str, set[str]]:
    """Module -> the repo modules it imports. `from package import module` is an edge to the
    module alone: the package's `__init__` is a parent, imported before either of them."""
    known = dict(modules())
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        targets = set()
        names = imported(path, module, top_level_only)
        for name in names:
            if name in known and any(other.startswith(name + ".") and other in known
                                     for other in names):
                continue  # `from a import b` with a.b a module: the edge is to a.b
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_no_modules_import_each_other_in_a_loop() -> None:
    """Not at import time (a deadlock of module initialisation) and not through an import
    inside a function either (two modules that need each other are one concern, or a third)."""
    assert find_cycle(module_graph()) == []


@pytest.mark.parametrize("graph, loops", [
    ({"a": {"b"}, "b": {"a"}}, True),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
])
def test_the_loop_check_finds_loops(graph: dict[str, set[str]], loops: bool) -> None:
    assert bool(find_cycle(graph)) is loops


def test_the_loop_check_follows_imports_inside_functions(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from .image import check\n", encoding="utf-8")
    assert "dermserve.core.image" in imported(probe, "dermserve.core.probe")
    assert "dermserve.core.image" not in imported(probe, "dermserve.core.probe",
                                                  top_level_only=True)


def test_the_release_run_imports_no_research_script() -> None:
    """dermserve/trainer/research/ is run by hand; what `dermserve-train` runs never needs it."""
    found = [f"{module} imports {name}" for module, path in modules()
             if module.startswith("dermserve.trainer")
             and not module.startswith("dermserve.trainer.research")
             for name in imported(path, module) if name.startswith("dermserve.trainer.research")]
    assert found == []
