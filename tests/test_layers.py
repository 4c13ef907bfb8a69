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

ALLOWED: dict[str, set[str]] = {
    "dermserve": set(),
    "core": set(),
    "batch": {"core"},
    "protocol": {"core", "batch", "dermserve"},
    "client": {"core", "protocol", "dermserve"},
    "trainer": {"core"},
    "worker": {"core", "batch"},
    "service": {"core", "protocol", "batch", "dermserve"},
    "cli": {"core", "protocol", "client", "batch", "dermserve"},
    "web": {"core", "protocol", "client", "dermserve"},
    "devtools": {"core", "protocol", "client", "batch", "trainer", "worker", "service", "cli",
                 "web", "dermserve"},
}
"""Package -> the repo packages it may import: the stubs (dermserve) and the transport-free core
at the bottom; the batch domain on the core; protocol (proto <-> domain) on both; the client
connection on protocol; the front, the worker and the trainer on what they serve; the CLI and
the web page on the client side only. Only the checkout's dev tools (devtools) see
everything."""
CLIENT_FORBIDDEN = ("batch.jobs", "batch.store", "batch.queues")
"""The Redis side of the batch domain: a client (cli, web, client) reads a job's results and
manifests with the pure batch modules (records, references, results), never the queue."""
CORE_FORBIDDEN = {"rq", "redis", "grpc_health", "grpc_reflection", "starlette", "uvicorn",
                  "keras", "matplotlib"}
"""What would tie the core to one edge: queues, Redis, gRPC, the web server, the trainer's
libraries (TensorFlow itself is the model runtime the backends load)."""
NOT_PACKAGES = {"tests", "protos", "deploy", "docs", "models", "bench-results", "var", "build"}


def packages() -> list[str]:
    """Every top-level Python package of the checkout (a folder with `__init__.py`)."""
    return sorted(path.parent.name for path in ROOT.glob("*/__init__.py")
                  if path.parent.name not in NOT_PACKAGES)


def modules() -> Iterator[tuple[str, Path]]:
    for package in packages():
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


def layer_violations() -> list[str]:
    found = []
    known = set(ALLOWED)
    for module, path in modules():
        own = module.split(".")[0]
        for name in sorted(imported(path, module)):
            other = name.split(".")[0]
            if other == own:
                continue
            if other in known and other not in ALLOWED[own]:
                found.append(f"{module} imports {name} ({own} may not import {other})")
            if own in {"cli", "web", "client", "protocol"} and name.startswith(CLIENT_FORBIDDEN):
                found.append(f"{module} imports {name}: a client never reaches Redis")
            if own == "core" and other in CORE_FORBIDDEN:
                found.append(f"{module} imports {name}: the core stays transport-free")
    return found


def test_every_package_imports_only_what_it_may() -> None:
    assert layer_violations() == []


def test_the_layer_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    """The check itself works: a function-level import of the front by a client is seen."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from service.server import serve\n", encoding="utf-8")
    assert "service.server" in imported(probe, "cli.probe")
    assert "service" not in ALLOWED["cli"]


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
    probe.write_text("def f():\n    from core.validation import check\n", encoding="utf-8")
    assert "core.validation" in imported(probe, "core.probe")
    assert "core.validation" not in imported(probe, "core.probe", top_level_only=True)


def test_the_release_run_imports_no_research_script() -> None:
    """trainer/research/ is run by hand; the package `dermserve-train` runs never needs it."""
    found = [f"{module} imports {name}" for module, path in modules()
             if module.startswith("trainer") and not module.startswith("trainer.research")
             for name in imported(path, module) if name.startswith("trainer.research")]
    assert found == []
