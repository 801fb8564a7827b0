"""The package's layers (docs/design.md): an import only goes down or sideways within a layer, inference and the
tasks are siblings that do not import each other, data and models do not know each other, and no modules
import each other in a loop. Read from the code's own imports (function-level ones too), with Python's ast."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "captioner"

# Bottom to top: a module may import from its own layer or those below it, never from one above.
LAYERS = [
    {"errors", "files", "text", "vocab", "config", "checkpoint", "decoding", "metrics", "rewards", "distributed"}
    | {"device", "visualize", "class_words", "reference", "seeds", "results"},
    {"data", "models"},
    {"training", "scoring", "scst"},
    {"tasks", "pipeline", "inference", "runtime", "export", "report", "serve", "music", "neurons"},
    {"cli", "__init__", "__main__"},
]
INFERENCE = {"pipeline", "inference", "runtime", "export", "report", "serve", "music", "neurons"}
# (importer, imported) pairs that stay apart although no layer rule keeps them so
APART = {("data", "models"), ("models", "data")}
APART |= {(part, "tasks") for part in INFERENCE} | {(part, "training") for part in INFERENCE}
APART |= {("tasks", part) for part in INFERENCE} | {("training", part) for part in ("scoring", "scst")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules a file imports, at its top or inside its functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("captioner")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("captioner"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return {name for name in found if name in known}


def part(name: str) -> str:
    """The piece of the package a module belongs to: captioner.data.loaders -> data, captioner -> __init__."""
    pieces = name.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def layer(name: str) -> int:
    return next(i for i, members in enumerate(LAYERS) if part(name) in members)


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_every_module_has_a_layer():
    assert [name for name in modules() if not any(part(name) in members for members in LAYERS)] == []


def test_imports_never_run_up_a_layer_or_between_pieces_kept_apart():
    wrong = []
    for name, imported in graph().items():
        for target in imported:
            if layer(target) > layer(name):
                wrong.append(f"{name} -> {target} (runs up from layer {layer(name)} to {layer(target)})")
            elif (part(name), part(target)) in APART:
                wrong.append(f"{name} -> {target} ({part(name)} and {part(target)} stay apart)")
    assert wrong == []


def test_no_modules_import_each_other_in_a_loop():
    edges, cycles = graph(), []

    def visit(name: str, path: list[str], done: set[str]) -> None:
        for target in sorted(edges[name]):
            if target in path:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in done:
                visit(target, [*path, target], done)
        done.add(name)

    done: set[str] = set()
    for name in sorted(edges):
        if name not in done:
            visit(name, [name], done)
    # the package's face (captioner/__init__.py) re-exports its submodules; importing one runs it first
    assert [cycle for cycle in cycles if not cycle.startswith("captioner ->")] == []


def test_the_rules_see_a_real_import():
    """The check reads function-level imports and from-imports of submodules (so a rule cannot pass by
    reading nothing)."""
    found = graph()
    assert "captioner.models.registry" in found["captioner.pipeline"]
    assert "captioner.training" in found["captioner.tasks.ball"]  # `from captioner import training`
    assert "captioner.report" in found["captioner.serve.app"]  # imported inside a function
