"""The layout's one rule: every import runs downward (docs/architecture.md).

The package's top-level units (modules and folders under ``discrete_diffusion/``) are placed on the levels of
:data:`LEVELS`, lowest first. A module may import from its own unit or from a unit on a strictly lower level,
never from a higher one or a sibling on the same level; and no set of modules imports itself in a cycle (within a
folder too). Every import counts: inside functions and under ``TYPE_CHECKING`` as well. A new folder or
top-level module must be placed here, so this list is the one written record of the layer order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import discrete_diffusion

PACKAGE = "discrete_diffusion"
ROOT = Path(discrete_diffusion.__file__).resolve().parent

#: Lowest first; DESIGN.md section 4 and docs/architecture.md describe what each holds.
LEVELS: list[list[str]] = [
    ["__init__", "schedules", "distributed"],            # math of the noise schedule; process-group plumbing
    ["config", "processes", "nn", "data"],                # config schema; forward processes; networks; datasets
    ["denoiser", "oracle", "count_oracle"],               # what a model predicts; exact tables (finite; counts)
    ["blocks"],                                           # block diffusion: block denoiser, block bound, oracle
    ["losses"],                                           # the continuous-time ELBO
    ["likelihood", "samplers"],                           # the bound on a dataset; one file per sampler
    ["builders"],                                         # config -> objects
    ["runs"],                                             # the run directory: files, checkpoints, load_run
    ["report"],                                           # sample grids, charts, the report page
    ["train"],                                            # the one training loop, tasks, DDP, EMA
    ["baselines", "guidance"],                            # likelihood baselines; guidance
    ["posterior", "planner", "evaluate"],                 # posterior sampling; DDPD planner; sample quality
    ["pipeline"],                                         # conditioning, generation and evaluation of a loaded run
    ["cli"],                                              # one module per subcommand
]
LEVEL = {unit: i for i, units in enumerate(LEVELS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """(absolute module, line) for every import of this package in ``path``; ``from X import name`` also yields
    ``X.name`` so that importing a submodule by name counts as importing it."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            if node.module:  # ``from . import data`` imports the submodule, not the package's __init__
                found.append((target, node.lineno))
            found += [(f"{target}.{a.name}", node.lineno) for a in node.names]
    return found


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (names that are not modules are dropped)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        graph[name] = {target for target, _ in imported_modules(path) if target in known and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_unit_has_a_level() -> None:
    units = {unit_of(m) for m in modules()}
    assert units - set(LEVEL) == set(), "place the new unit in LEVELS (tests/test_architecture.py)"
    assert set(LEVEL) - units == set(), "a unit in LEVELS no longer exists"


def test_imports_run_downward() -> None:
    upward = []
    for name, path in modules().items():
        here = unit_of(name)
        for target, line in imported_modules(path):
            there = unit_of(target)
            if there != here and there in LEVEL and LEVEL[there] >= LEVEL[here]:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({here} level {LEVEL[here]} -> "
                              f"{there} level {LEVEL[there]})")
    assert upward == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_should() -> None:
    """Controls: a cycle and an upward import planted in a made-up graph are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert LEVEL["cli"] > LEVEL["runs"] > LEVEL["data"]
    assert unit_of("discrete_diffusion.runs.load") == "runs" and unit_of("discrete_diffusion") == "__init__"
