"""The longest functions and files of the package, to keep both short enough to hold in the head.

python scripts/code_size.py [--top 5] [PACKAGE_DIR]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def functions(path: Path):
    """(lines, "file:line name") of every function and method in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.end_lineno - node.lineno + 1, f"{path}:{node.lineno} {node.name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default="captioner")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    files = sorted(Path(args.package).rglob("*.py"))
    sizes = sorted(((len(f.read_text(encoding="utf-8").splitlines()), str(f)) for f in files), reverse=True)
    lengths = sorted((item for f in files for item in functions(f)), reverse=True)
    print(f"{len(files)} files, {sum(n for n, _ in sizes)} lines, {len(lengths)} functions")
    print("longest files:")
    for n, name in sizes[: args.top]:
        print(f"  {n:4d} lines  {name}")
    print("longest functions:")
    for n, name in lengths[: args.top]:
        print(f"  {n:4d} lines  {name}")


if __name__ == "__main__":
    main()
