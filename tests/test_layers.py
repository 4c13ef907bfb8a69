"""The package layout stays layered (docs/architecture.md): read the import graph of the repo's
packages with `ast` (imports inside functions included) and check that every package imports
only from itself and from packages of lower layers, that the core imports no transport server,
queue or trainer library, and that no modules import each other in a loop at import time."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "dermserve": 0,  # the generated gRPC stubs
    "core": 1,       # transport-free: errors, model contract, validation, classifier, backends
    "trainer": 2,    # training, on the core's contract and preprocessing
    "batch": 2,      # the batch domain: jobs, Redis store, queues, records, results, references
    "worker": 3,     # the batch worker process: runner, chunks, reaper, metrics
    "service": 3,    # the gRPC front: both servicers, interceptors, health, metrics
    "cli": 4,        # the `dermserve` client
    "web": 5,        # the clinicians' page, a client of the front through cli/connection.py
    "devtools": 6,   # stack, redis launcher, stand-in model, benchmarks, page screenshots
    "tools": 7,      # the attack suite (checkout only): uses devtools
}
PACKAGES = [name for name in LAYERS if name != "dermserve"]
CORE_FORBIDDEN = {"rq", "redis", "grpc_health", "grpc_reflection"}
"""What would tie the core to one edge: queues, Redis, the gRPC server's own services."""


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
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


def layer_violations() -> list[str]:
    found = []
    for module, path in modules():
        own = module.split(".")[0]
        for name in sorted(imported(path, module)):
            other = name.split(".")[0]
            if other == own:
                continue
            if other in LAYERS and LAYERS[other] >= LAYERS[own]:
                found.append(f"{module} imports {name} ({other} is not below {own})")
            if own == "core" and other in CORE_FORBIDDEN:
                found.append(f"{module} imports {name}: the core stays transport-free")
    return found


def test_every_package_imports_only_lower_layers() -> None:
    assert layer_violations() == []


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself works: a core module importing the front is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from service.server import serve\n", encoding="utf-8")
    names = imported(probe, "core.probe")
    assert "service.server" in names
    assert LAYERS["service"] > LAYERS["core"]


def module_graph() -> dict[str, set[str]]:
    """Module -> the repo modules it imports at import time (top-level statements only; an
    import inside a function runs later and cannot deadlock module initialisation)."""
    known = dict(modules())
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        targets = set()
        for name in imported(path, module, top_level_only=True):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
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
    assert find_cycle(module_graph()) == []


@pytest.mark.parametrize("graph, loops", [
    ({"a": {"b"}, "b": {"a"}}, True),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
])
def test_the_loop_check_finds_loops(graph: dict[str, set[str]], loops: bool) -> None:
    assert bool(find_cycle(graph)) is loops


def test_the_image_modules_import_each_other_in_no_loop_even_inside_functions() -> None:
    """core/image/ is one way through an image (issue 25): no module calls back into one that
    imports it, not even through an import inside a function."""
    known = {module: path for module, path in modules() if module.startswith("core.image.")}
    graph = {module: {name for name in imported(path, module) if name in known} - {module}
             for module, path in known.items()}
    assert graph and find_cycle(graph) == []
