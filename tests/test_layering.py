"""The package's layers, read from its source with ``ast``: who may import whom, no import cycles, short functions.

The layers, bottom to top (a layer may import from the layers below it, never from those above):

* **model**: what the chapters teach, at the top level so that learners type ``fftd_course.blocks``:
  ``blocks quantize ivqvae losses diffusion mixture fusion fftd pipeline unet baseline diagrams``, the base they share
  (``configs viz timing data checkpoints``) and the package's ``__init__``;
* **training** (``fftd_course/training/``, and ``fftd_course.train``) and **evaluation**
  (``fftd_course/evaluation/``): two layers side by side on the model (the trainer may measure; evaluation
  imports nothing from training);
* **checks** (``fftd_course/checks/``, the exercise checks; chapter 10's check uses the trainer);
* **course** (``fftd_course/course/``: releasing notebooks, grading, the site, the syllabus);
* **app**: the command lines ``cli``, ``demo`` and ``__main__``, which may import anything.

Every module of the package must sit in one of them (a new module fails :func:`test_every_module_has_a_layer`
until it is placed: in a folder, or in :data:`LAYERS`).

Imports are all of them: at module level, inside functions (an import deferred to call time is still a
dependency) and under ``if TYPE_CHECKING``; relative ones are resolved to absolute names, and
``from X import name`` counts as an import of the module ``X.name`` when that is a module, else of ``X``.
A **shim** (an old name kept for released notebooks: a module that sets ``sys.modules[__name__]`` to the
module it imported, e.g. ``fftd_course/metrics.py``) is resolved to its target, so importing
``fftd_course.metrics`` is importing ``fftd_course.evaluation.metrics``.

**Cycles.** The graph holds one edge per explicit import. Python also imports a package's ``__init__``
before any of its submodules; those implicit edges are left out, because a package whose ``__init__``
re-exports its submodules (``checks/__init__`` imports ``checks.ch00``, ...) would otherwise form a "cycle"
with each of them that Python resolves in a fixed, harmless order. An explicit import of a package's
``__init__`` from inside it (``from . import NAME`` where ``NAME`` is defined in the ``__init__``, not a
submodule) is an edge like any other: it is the kind of cycle that leaves a half-initialised module.
A module importing itself is no edge.

**Functions** (and methods, nested ones included) are at most :data:`MAX_FUNCTION_LINES` lines, from the
``def`` to the last line of the body; :data:`TEMPORARY_LONG_FUNCTIONS` lists the ones still being split.

The detectors are shown to fail on a small planted package (a cycle through a function-level import, a
layer violation through a shim, a long function).
"""

from __future__ import annotations

import ast
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fftd_course"
MAX_FUNCTION_LINES = 80

# layer -> module names relative to the package: "" is the package's __init__ alone, "x" is the module x
# and, for a folder, everything below it.
LAYERS = {
    "model": ("", "blocks", "quantize", "ivqvae", "losses", "diffusion", "mixture", "fusion", "fftd", "pipeline",
              "unet", "baseline", "configs", "viz", "diagrams", "timing", "data", "checkpoints"),
    "training": ("training", "train"),
    "evaluation": ("evaluation",),
    "checks": ("checks",),
    "experiments": ("reproduction",),
    "course": ("course",),
    "app": ("cli", "demo", "__main__"),
}
# layer -> the layers it must not import from
FORBIDDEN = {
    "model": {"training", "evaluation", "checks", "experiments", "course", "app"},
    "training": {"checks", "experiments", "course", "app"},
    "evaluation": {"training", "checks", "experiments", "course", "app"},
    "checks": {"experiments", "course", "app"},
    "experiments": {"checks", "course", "app"},
    "course": {"app"},
    "app": set(),
}
# Functions over the limit that are being split right now ("path:qualified name"); remove an entry once its
# function is short (the test warns about entries that no longer match a long function).
TEMPORARY_LONG_FUNCTIONS: set[str] = set()


# ---- reading the package -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Import:
    source: str   # the importing module
    target: str   # the imported module (absolute; a shim not yet resolved)
    line: int
    in_function: bool


def find_modules(package_dir: Path, package: str) -> dict[str, Path]:
    """``{module name: file}`` of every module under ``package_dir`` (a package is its ``__init__.py``)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([package, *parts])] = path
    return modules


def _base(module: str, path: Path, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    if level == 0:
        return name or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name}" if name else package


class _Visitor(ast.NodeVisitor):
    def __init__(self, module: str, path: Path, modules: dict[str, Path], package: str):
        self.module, self.path, self.modules, self.package = module, path, modules, package
        self.imports: list[Import] = []
        self.aliases: dict[str, str] = {}  # local name -> module it is bound to (for shims)
        self.unresolved: list[str] = []
        self.depth = 0

    def _in_package(self, name: str) -> bool:
        return name == self.package or name.startswith(self.package + ".")

    def _add(self, target: str, node: ast.AST) -> None:
        if target not in self.modules:
            self.unresolved.append(f"{self.path}:{node.lineno}: imports {target}, which is no module of the package")
            return
        self.imports.append(Import(self.module, target, node.lineno, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if self._in_package(alias.name):
                self._add(alias.name, node)
                if alias.asname:
                    self.aliases[alias.asname] = alias.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _base(self.module, self.path, node.level, node.module)
        if not self._in_package(base):
            return
        for alias in node.names:
            full = f"{base}.{alias.name}"
            target = full if full in self.modules else base
            self._add(target, node)
            self.aliases[alias.asname or alias.name] = target

    def _function(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function


def _shim_target(tree: ast.Module, aliases: dict[str, str]) -> str | None:
    """The module a shim stands for: ``sys.modules[__name__] = NAME`` anywhere in it, NAME an imported module."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Subscript)
                and ast.unparse(node.targets[0]) == "sys.modules[__name__]" and isinstance(node.value, ast.Name)):
            return aliases.get(node.value.id)
    return None


@dataclass
class Graph:
    modules: dict[str, Path]
    shims: dict[str, str]          # old name -> the module it stands for (resolved through chains)
    edges: dict[str, list[Import]]  # module -> its imports, targets resolved through shims, no self-imports
    unresolved: list[str]


def import_graph(package_dir: Path, package: str = PACKAGE) -> Graph:
    modules = find_modules(package_dir, package)
    raw: dict[str, list[Import]] = {}
    shims: dict[str, str] = {}
    unresolved: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        visitor = _Visitor(name, path, modules, package)
        visitor.visit(tree)
        raw[name] = visitor.imports
        unresolved += visitor.unresolved
        target = _shim_target(tree, visitor.aliases)
        if target:
            shims[name] = target

    def resolve(name: str) -> str:
        seen = set()
        while name in shims and name not in seen:
            seen.add(name)
            name = shims[name]
        return name

    shims = {old: resolve(old) for old in shims}
    edges = {}
    for name, imports in raw.items():
        if name in shims:
            continue
        edges[name] = [Import(i.source, resolve(i.target), i.line, i.in_function) for i in imports
                       if resolve(i.target) != name]
    return Graph(modules, shims, edges, unresolved)


# ---- the rules -----------------------------------------------------------------------------------------------

def layer_of(module: str, package: str = PACKAGE, layers: dict = LAYERS) -> str | None:
    relative = "" if module == package else module[len(package) + 1:]
    for layer, names in layers.items():
        for n in names:
            if relative == n or (n and relative.startswith(n + ".")):
                return layer
    return None


def unplaced_modules(graph: Graph, package: str = PACKAGE, layers: dict = LAYERS) -> list[str]:
    return sorted(m for m in graph.edges if layer_of(m, package, layers) is None)


def layer_violations(graph: Graph, package: str = PACKAGE, layers: dict = LAYERS,
                     forbidden: dict = FORBIDDEN) -> list[str]:
    problems = []
    for module, imports in sorted(graph.edges.items()):
        mine = layer_of(module, package, layers)
        for i in imports:
            theirs = layer_of(i.target, package, layers)
            if mine and theirs in forbidden.get(mine, ()):
                where = "inside a function" if i.in_function else "at module level"
                problems.append(f"{graph.modules[module]}:{i.line}: {module} ({mine}) imports {i.target} "
                                f"({theirs}) {where}; {mine} must not import from {', '.join(sorted(forbidden[mine]))}")
    return problems


def import_cycles(graph: Graph) -> list[str]:
    """One line per strongly connected component of more than one module (Tarjan's algorithm), with its edges."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted({i.target for i in graph.edges.get(v, ())}):
            if w not in index:
                connect(w)
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
                components.append(sorted(component))

    for v in sorted(graph.edges):
        if v not in index:
            connect(v)
    problems = []
    for component in components:
        inside = [f"{i.source} -> {i.target} (line {i.line}{', in a function' if i.in_function else ''})"
                  for m in component for i in graph.edges[m] if i.target in component]
        problems.append(f"import cycle among {', '.join(component)}: " + "; ".join(inside))
    return problems


def long_functions(package_dir: Path, root: Path, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``{"path:qualified.name": lines}`` of every function or method over ``limit`` lines."""
    found = {}

    def visit(node: ast.AST, prefix: str, path: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef) and child.end_lineno - child.lineno + 1 > limit:
                    found[f"{path}:{name}"] = child.end_lineno - child.lineno + 1
                visit(child, name + ".", path)
            else:
                visit(child, prefix, path)

    for file in sorted(package_dir.rglob("*.py")):
        visit(ast.parse(file.read_text(encoding="utf-8")), "", file.relative_to(root).as_posix())
    return found


# ---- the package ---------------------------------------------------------------------------------------------

GRAPH = import_graph(ROOT / PACKAGE)


def test_every_import_names_a_module_of_the_package():
    assert not GRAPH.unresolved, "\n".join(GRAPH.unresolved)


def test_every_module_has_a_layer():
    unplaced = unplaced_modules(GRAPH)
    assert not unplaced, (f"modules in no layer: {', '.join(unplaced)}; put each in the folder of its layer "
                          "(training/, evaluation/, course/) or name it in LAYERS in tests/test_layering.py")


def test_no_layer_imports_from_a_layer_above_it():
    problems = layer_violations(GRAPH)
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_no_import_cycles():
    problems = import_cycles(GRAPH)
    assert not problems, "\n".join(problems)


def test_the_old_names_are_shims_of_the_new_modules():
    assert GRAPH.shims.items() >= {
        "fftd_course.metrics": "fftd_course.evaluation.metrics", "fftd_course.judge": "fftd_course.evaluation.judge",
        "fftd_course.bench": "fftd_course.evaluation.bench", "fftd_course.assignments": "fftd_course.course.assignments",
        "fftd_course.grading": "fftd_course.course.grading", "fftd_course.site": "fftd_course.course.site",
        "fftd_course.syllabus": "fftd_course.course.syllabus"}.items()


def test_no_function_is_longer_than_the_limit():
    found = long_functions(ROOT / PACKAGE, ROOT)
    over = {name: n for name, n in found.items() if name not in TEMPORARY_LONG_FUNCTIONS}
    assert not over, (f"functions over {MAX_FUNCTION_LINES} lines (split them): "
                      + ", ".join(f"{name} ({n} lines)" for name, n in sorted(over.items())))
    stale = sorted(TEMPORARY_LONG_FUNCTIONS - set(found))
    if stale:
        warnings.warn(f"TEMPORARY_LONG_FUNCTIONS in tests/test_layering.py lists functions that are no longer over "
                      f"{MAX_FUNCTION_LINES} lines (or gone): {', '.join(stale)}; remove them", UserWarning)


# ---- the detectors catch planted violations ------------------------------------------------------------------

PLANTED = {
    "__init__.py": '"""A toy package."""\nVERSION = 1\n',
    "blocks.py": "def uses_metrics():\n    from . import metrics  # a model module reaching evaluation, via the old name\n"
                 "    return metrics\n",
    "metrics.py": "import sys\nfrom .evaluation import metrics as _module\nsys.modules[__name__] = _module\n",
    "evaluation/__init__.py": "",
    "evaluation/metrics.py": "from .. import VERSION\n",
    "course/__init__.py": "",
    "course/release.py": "from . import grade\n\n\ndef main():\n    return grade.run()\n",
    "course/grade.py": "def run():\n    from .release import main  # the cycle closes inside a function\n    return main\n",
    "checks/__init__.py": "from .ch00 import check\n",
    "checks/ch00.py": "def check():\n    pass\n",
    "cli.py": "from .course import release\n",
}


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "toy" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path / "toy"


def test_planted_cycle_and_layer_violation_are_found(tmp_path):
    graph = import_graph(_plant(tmp_path, PLANTED), "toy")
    assert graph.shims == {"toy.metrics": "toy.evaluation.metrics"} and not graph.unresolved
    assert unplaced_modules(graph, "toy") == []
    violations = layer_violations(graph, "toy")
    assert len(violations) == 1 and "toy.blocks (model) imports toy.evaluation.metrics (evaluation) inside a function" \
        in violations[0], violations
    cycles = import_cycles(graph)
    # the only cycle: checks/__init__ importing its own submodule, and evaluation.metrics importing the package's
    # __init__ (which imports nothing back), are none
    assert len(cycles) == 1 and "toy.course.grade, toy.course.release" in cycles[0], cycles


def test_planted_package_init_cycle_and_unplaced_module_are_found(tmp_path):
    files = dict(PLANTED, **{"checks/ch00.py": "from . import helper  # a name of checks/__init__\n",
                             "checks/__init__.py": "from .ch00 import helper as _h\nhelper = 1\n",
                             "stray.py": "", "timing.py": "from .nowhere import x\n"})
    graph = import_graph(_plant(tmp_path, files), "toy")
    assert any("toy.checks, toy.checks.ch00" in c for c in import_cycles(graph))
    assert unplaced_modules(graph, "toy") == ["toy.stray"]
    assert len(graph.unresolved) == 1 and "imports toy.nowhere" in graph.unresolved[0]


def test_planted_long_function_is_found(tmp_path):
    body = "    x = 1\n" * (MAX_FUNCTION_LINES - 1)
    package = _plant(tmp_path, {"ok.py": f"def fits():\n{body}",
                                "long.py": f"class A:\n    def method(self):\n{textwrap.indent(body, '    ')}"
                                           f"        x = 2\n"})
    assert long_functions(package, tmp_path) == {"toy/long.py:A.method": MAX_FUNCTION_LINES + 1}

