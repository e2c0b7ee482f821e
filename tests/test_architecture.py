"""The architecture, measured from the code's own imports (issue #13's "done means").

Data flows one way: train -> evaluation -> metrics -> records -> analysis. Every module has a
layer; a module imports only from lower layers, or from its own package (acyclic). A new module
must be given a layer here, which is where a reviewer sees where it sits.
"""

from __future__ import annotations

import ast
from pathlib import Path

import labelfree

SRC = Path(labelfree.__file__).parent

#: Layer of each module or package (``labelfree.`` omitted); higher layers use lower ones.
LAYERS = {
    "records": 0,
    "config": 0,
    "rundir": 1,
    "checkpoint": 2,
    # building blocks: each one concern, none knows about training or analysis
    "data": 3,
    "backbones": 3,
    "methods": 3,
    "optim": 3,
    "preemption": 3,
    "distributed": 3,
    "metrics": 3,
    "loggers": 3,
    "analysis": 3,
    "sweep": 3,
    "views": 4,
    "evaluation": 5,
    "build": 6,
    "loop": 6,
    "monitor": 6,  # the evaluation for any training loop
    "integrations": 7,  # training frameworks' hooks around the monitor
    # commands
    "train": 7,
    "eval": 7,
    "analyze": 7,
    "reproduce": 8,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[0] == "conf" or parts == ("__init__",):
            continue
        name = ".".join(p for p in parts if p != "__init__")
        found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every labelfree module a file imports, at any depth (lazy imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out |= {n.removeprefix("labelfree.") for n in names if n.startswith("labelfree.")}
    return out


def _layer(module: str) -> int:
    top = module.split(".")[0]
    assert top in LAYERS, f"labelfree.{module} has no layer in tests/test_architecture.py"
    return LAYERS[top]


def test_every_import_goes_down_the_flow():
    wrong = []
    for module, path in _modules().items():
        for dep in _imports(path):
            same_package = dep.split(".")[0] == module.split(".")[0]
            if not same_package and _layer(dep) >= _layer(module):
                wrong.append(f"{module} (layer {_layer(module)}) imports {dep} ({_layer(dep)})")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    modules = _modules()
    graph = {m: {d for d in _imports(p) if d in modules} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            assert state.get(dep) != 1, "import circle: " + " -> ".join([*path, node, dep])
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_hydra_is_used_through_its_public_api_only():
    offenders = []
    for module, path in _modules().items():
        text = path.read_text()
        if "hydra._internal" in text or "_return_value" in text:
            offenders.append(module)
    assert not offenders


def test_one_atomic_write_helper():
    """Files are replaced atomically in one place only (labelfree.rundir.write_atomic)."""
    users = [
        m
        for m, p in _modules().items()
        if "os.replace(" in p.read_text() or ".replace(tmp" in p.read_text()
    ]
    assert users == ["rundir"]
