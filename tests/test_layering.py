"""The layering the README's Layout table promises. composerlite/ is rooms, each built on the ones
below it and never importing one above: errors and lazy; system/ (device, processes, signals,
storage), data/ and the model family; core/ (events, State, Algorithm, Callback, Logger, Engine,
Time, ...); the registry; observe/ (loggers, trackers, speed monitor); run/ (settings, run
directory, checkpoints, the loop, the library calls); bench/; commands/; and on top the faces: the
public API (composerlite/__init__.py), cli.py, __main__.py and launch.py. Only cli.py and
__main__.py import the command line. An algorithm imports the plugin API and what it stands on, never the run above it,
nor another algorithm (a bundle names its members as data and builds them through the registry),
and nothing in composerlite/ imports a specific algorithm. No composerlite module imports, while
being imported, one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
FACES = {"composerlite/cli.py", "composerlite/__main__.py"}  # the command line's
# Where each package's files live (pyproject.toml's package-dir): algorithms/ and models/ install
# as composerlite.algorithms and composerlite.models.
PACKAGE_FOLDERS = {"composerlite": "composerlite", "composerlite.algorithms": "algorithms",
                   "composerlite.models": "models"}
# The rooms, from the bottom up: a module may import its own room's modules and those of the rooms
# below it, never a room above. A room is named by the modules and packages it holds.
ROOMS = [
    ("base", ("composerlite.errors", "composerlite.lazy")),
    ("system", ("composerlite.system",)),
    ("data", ("composerlite.data",)),
    ("models", ("composerlite.models",)),
    ("core", ("composerlite.core",)),
    ("registry", ("composerlite.registry",)),
    ("observe", ("composerlite.observe",)),
    ("run", ("composerlite.run",)),
    ("bench", ("composerlite.bench",)),
    ("commands", ("composerlite.commands",)),
    ("faces", ("composerlite.cli", "composerlite.__main__", "composerlite.launch")),  # and composerlite itself
]
# What an algorithm may import of composerlite: the rooms up to the registry (the plugin API, which
# it also imports as `from composerlite import Algorithm, Event, ...`; core/'s surgery and attention
# tools, system/'s distributed helpers, the model family, the registry that builds a bundle's
# members), never the run that uses it.
ALGORITHM_ROOMS = {"base", "system", "data", "models", "core", "registry"}


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


def public_api() -> dict[str, str]:
    """`composerlite.NAME` -> the module that defines it, for each name composerlite/__init__.py
    exports: imported there (`from composerlite.core.event import Event`) or lazily (`_LAZY`)."""
    sources = {}
    for node in ast.parse((ROOT / "composerlite" / "__init__.py").read_text()).body:
        if isinstance(node, ast.ImportFrom):
            sources.update({f"composerlite.{alias.asname or alias.name}": node.module for alias in node.names})
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            sources.update({f"composerlite.{name}": module for name, module in ast.literal_eval(node.value).items()})
    return sources


API = public_api()


def room(module: str) -> str | None:
    """The room of composerlite module `module` (a dotted name); None for a specific algorithm or a
    module that is not composerlite's. A name of the public API (`from composerlite import Event`
    names composerlite.Event) is in the room of the module that defines it; the package itself
    (composerlite/__init__.py, which imports them all) is a face."""
    module = API.get(module, module)
    if module.partition(".")[0] != "composerlite" or module.partition(".")[2].partition(".")[0] == "algorithms":
        return None
    for room_name, prefixes in ROOMS:
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return room_name
    return "faces"


RANK = {room_name: rank for rank, (room_name, _) in enumerate(ROOMS)}


def test_every_module_is_in_a_room():
    homeless = [name for name, _ in python_files("composerlite", "models") if room(module_name(name)) is None]
    assert homeless == []


def test_each_room_imports_only_itself_and_the_rooms_below_it():
    """Wherever the import statement is: in a function, under TYPE_CHECKING, at module level."""
    offenders = []
    for name, path in python_files("composerlite", "models"):
        importer = room(module_name(name))
        for module in sorted(imports(path)):
            imported = room(module)
            if imported is not None and RANK[imported] > RANK[importer]:
                offenders.append(f"{name} ({importer}) imports {module} ({imported})")
    assert offenders == []


def test_the_algorithms_import_the_plugin_api_and_what_it_stands_on_only():
    """The built-in algorithms, and the example plugins the docs build."""
    offenders = []
    for name, path in python_files("algorithms", "examples"):
        for module in sorted(imports(path)):
            imported = room(module)
            if imported is not None and imported not in ALGORITHM_ROOMS and module != "composerlite":
                offenders.append(f"{name} imports {module} ({imported})")
    assert offenders == []


def test_nothing_below_the_cli_imports_it():
    """Only cli.py and __main__.py import the command line, and only they import the commands;
    the commands (which cli.py loads) import each other but never cli.py back. Also true of the
    benchmark scripts and the examples."""
    offenders = []
    for name, path in python_files("composerlite", "algorithms", "models", "benchmarks", "examples"):
        if name in FACES:
            continue
        is_command = name.startswith("composerlite/commands/")
        offenders += [f"{name} imports {module}" for module in sorted(imports(path))
                      if module == "composerlite.cli" or (not is_command and (
                          module == "composerlite.commands" or module.startswith("composerlite.commands.")))]
    assert offenders == []


def test_composerlite_imports_no_specific_algorithm():
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
