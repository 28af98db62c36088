"""The layout, the import graph and docs/ARCHITECTURE.md agree: every module of the package is on
the map and nothing else is; a module imports only from its own stage and the stages below it;
there is no import cycle; only run.py imports Hydra and only track.py imports wandb."""

from __future__ import annotations

import ast
import re

from conftest import REPO

PACKAGE = REPO / "superposition"
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
# stages, lowest first: a module may import from its own stage and the ones before it
STAGES = [
    "config",
    "rng",
    "grid",
    "tasks",
    "store",
    "engine",
    "analysis",
    "figures",
    "track",
    "live",
    "job",
    "sweep",
    "run",
]


def module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules that `name` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {m for m in found if m in known and m != name}


def stage(module: str) -> int:
    return STAGES.index(module.split(".")[1])


def import_graph() -> dict[str, set[str]]:
    trees = modules()
    known = set(trees)
    graph = {name: imports_of(name, tree, known) for name, tree in trees.items()}
    # importing a package's module runs the package's __init__ first
    return {
        name: {m for m in deps if m != "superposition"}
        for name, deps in graph.items()
        if name != "superposition"
    }


def test_no_module_imports_from_a_later_stage():
    upward = [
        f"{name} -> {dep}"
        for name, deps in import_graph().items()
        for dep in deps
        if stage(dep) > stage(name)
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph.get(name, ())):
            if dep.startswith(name + "."):
                continue  # a package importing its own modules (registration) is not a cycle
            assert state.get(dep) != "open", " -> ".join([*path, name, dep])
            if dep not in state:
                visit(dep, [*path, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_hydra_and_wandb_stay_at_the_edges():
    for name, tree in modules().items():
        roots = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
        if "wandb" in roots:
            assert name == "superposition.track", name
        if "hydra" in roots:
            assert name in ("superposition.run", "superposition.config"), name
    config = modules()["superposition.config"]
    assert not any(
        isinstance(node, ast.ImportFrom) and (node.module or "").startswith("superposition")
        for node in ast.walk(config)
    )


def test_the_architecture_map_lists_every_module():
    text = ARCHITECTURE.read_text()
    block = re.search(r"## Layout\n.*?```\n(.*?)```", text, re.DOTALL).group(1)
    mapped, folder, stages = set(), [], []
    for line in block.splitlines()[1:]:
        indent = (len(line) - len(line.lstrip())) // 2
        entry = re.split(r"\s{2,}", line.strip())[0]
        folder = folder[: indent - 1]
        if indent == 1:
            stages.append(entry.removesuffix("/").removesuffix(".py"))
        if entry.endswith("/"):
            folder.append(entry.rstrip("/"))
            continue
        for file in entry.split(","):
            if file:
                mapped.add("/".join([*folder, file.strip()]))
    actual = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    actual |= {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("__init__.py")
        if p.read_text().strip()  # an empty __init__ needs no line
    }
    assert mapped == actual
    assert stages == STAGES  # the map lists the stages in their order, lowest first
