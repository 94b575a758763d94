"""The house keeps its shape: packages, no import circle, layers that only point down.

Read from the source with `ast` (every import, including the lazy ones inside functions,
since a lazy import is still a dependency; not those under `if TYPE_CHECKING:`, which only
name a type for the reader and never run), so the test needs no import of ft itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ft_cli"

# Top to bottom: a package may import from the layers below it, never from its own layer's
# other packages or from above. (`ft_cli` itself holds only __version__ and may be read by all.)
LAYERS = [
    ("cli",),  # the command line: parse, load config, call a stage
    ("eval", "estimate", "export"),  # stages that read what training produced, or plan it
    ("train",),  # ft train / resume / launch; reaches eval only through callbacks the cli hands it
    ("merge",),  # adapters, the verified merge, generate/chat (used by eval and export)
    ("runs",),  # the run-directory contract shared by train, resume, eval, merge, export
    ("data",),  # records and tokens, masks included
    ("models",),  # families, tiny models, GGUF loading, file checks
    ("config",),  # schema, loading, messages, method registry and rules
    ("sandbox",),  # runs untrusted code (the code_exec reward) in isolation
    ("core",),  # errors, files and outputs, redaction, quiet console, environment report
]
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(module: str) -> set[str]:
    """The ft_cli modules `module` imports (a `from package import name` counts the submodule when it is one)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: _imports(module) for module in MODULES}


def _package(module: str) -> str:
    parts = module.split(".")
    if module == "ft_cli.__main__":
        return "cli"
    return parts[1] if len(parts) > 1 else "ft_cli"


def test_no_flat_modules_stand_in_for_packages():
    flat = sorted(path.name for path in PACKAGE.glob("*.py") if path.name not in ("__init__.py", "__main__.py"))
    assert flat == [], f"modules beside the packages: {flat}; put each in the package that owns its job"


def test_every_package_is_a_declared_layer_and_says_what_it_owns():
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages == set(RANK), f"packages {sorted(packages)} against the declared layers {sorted(RANK)}"
    for name in packages:
        docstring = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert docstring, f"ft_cli/{name}/__init__.py: a docstring saying what the package owns"


def test_no_import_circle():
    """Tarjan's strongly connected components over the module graph: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert circles == [], f"import circles: {circles}"


def test_layers_only_point_down():
    upward = []
    for module, targets in sorted(GRAPH.items()):
        source = _package(module)
        for target in sorted(targets):
            destination = _package(target)
            if destination in (source, "ft_cli") or source == "ft_cli":
                continue
            if RANK[source] >= RANK[destination]:
                upward.append(f"{module} -> {target} ({source} may not import {destination})")
    assert upward == [], "imports against the declared layers:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small_enough_to_read(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 500, f"{MODULES[module]}: {lines} lines; split it by job (~450 at most)"
