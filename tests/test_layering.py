"""The layering the README promises: the command line is on top and nothing below it imports it;
the core never imports a specific algorithm, and an algorithm never imports another (a bundle
names its members as data and builds them through the registry); and no composerlite module
imports, while being imported, one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
FACES = {"composerlite/cli.py", "composerlite/__main__.py"}
# Where each package's files live (pyproject.toml's package-dir): algorithms/ and models/ install
# as composerlite.algorithms and composerlite.models.
PACKAGE_FOLDERS = {"composerlite": "composerlite", "composerlite.algorithms": "algorithms",
                   "composerlite.models": "models"}


def module_name(name: str) -> str:
    """The dotted name of the file `name` (a path from the repository root)."""
    parts = name.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    for package, folder in PACKAGE_FOLDERS.items():
        if parts[0] == folder:
            return ".".join([package, *parts[1:]])
    return ".".join(parts)


def imported_modules(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> set[str]:
    """What one import statement in module `importer` names: `import a.b` names a.b; `from a import
    b` names a, and a.b too (b may be a module); relative imports are resolved against `importer`."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if node.level:
        anchor = importer.split(".")[: len(importer.split(".")) - node.level + is_package]
        module = ".".join([*anchor, node.module] if node.module else anchor)
    else:
        module = node.module
    return {module} | {f"{module}.{alias.name}" for alias in node.names}


def imports(path: Path) -> set[str]:
    """Every module `path` imports, wherever the import statement is."""
    name = path.relative_to(ROOT).as_posix()
    return {module for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for module in imported_modules(node, module_name(name), path.name == "__init__.py")}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_time_imports(path: Path) -> set[str]:
    """The modules `path` imports while it is being imported: statements at module level, in class
    bodies and in top-level if/try/with blocks, but not in functions, which run later, nor under
    `if TYPE_CHECKING:`, which never runs (it is how two modules name each other's types)."""
    name = path.relative_to(ROOT).as_posix()
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update(imported_modules(node, module_name(name), path.name == "__init__.py"))
            elif isinstance(node, ast.If):
                if not is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, (ast.With, ast.ClassDef)):
                visit(node.body)

    visit(ast.parse(path.read_text()).body)
    return found


def python_files(*folders: str) -> Iterator[tuple[str, Path]]:
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path


def test_nothing_below_the_cli_imports_it():
    """Only the faces import the command line, and only they import the commands; the commands
    (which cli.py loads) import each other but never cli.py back."""
    offenders = []
    for name, path in python_files("composerlite", "algorithms", "models", "benchmarks", "examples"):
        if name in FACES:
            continue
        is_command = name.startswith("composerlite/commands/")
        offenders += [f"{name} imports {module}" for module in sorted(imports(path))
                      if module == "composerlite.cli" or (not is_command and (
                          module == "composerlite.commands" or module.startswith("composerlite.commands.")))]
    assert offenders == []


def test_the_core_imports_no_specific_algorithm():
    offenders = []
    for name, path in python_files("composerlite"):
        offenders += [f"{name} imports {module}" for module in imports(path)
                      if module.startswith("composerlite.algorithms.")]
    assert offenders == []


def test_an_algorithm_never_imports_another():
    offenders = []
    for name, path in python_files("algorithms"):
        own = name.split("/")[1]
        offenders += [f"{name} imports {module}" for module in imports(path)
                      if module.startswith("composerlite.algorithms.") and module.split(".")[2] != own]
    assert offenders == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm): each is a
    set of modules every one of which imports, through the others, every other."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def connect(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                connect(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in stack:
                lowest[module] = min(lowest[module], index[imported])
        if lowest[module] == index[module]:
            component = [stack.pop()]
            while component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            connect(module)
    return found


def test_no_import_cycle_among_composerlite_modules():
    files = {module_name(name): path for name, path in python_files(*PACKAGE_FOLDERS.values())}
    graph = {}
    for module, path in files.items():
        graph[module] = set()
        for imported in import_time_imports(path):
            while imported and imported not in files:  # `from a import name`: a is the module imported
                imported = imported.rpartition(".")[0]
            if imported and imported != module:
                graph[module].add(imported)
    found = [" <-> ".join(component) + ": " + ", ".join(f"{module} imports {imported}" for module in component
                                                      for imported in sorted(graph[module] & set(component)))
             for component in cycles(graph)]
    assert not found, "import cycles:\n" + "\n".join(found)
