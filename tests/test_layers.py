"""The packages' imports point one way and hold no cycle (issue 12).

Layers, lowest first: util < mechanisms < corpus (and engines) < jobs < models (and federation)
< service. A module may import its own package and lower layers only; util imports util alone
and is importable by all. Every import counts: module level, inside a function, under
``if TYPE_CHECKING``. A function-level import is allowed only where a heavy optional dependency
must stay lazy (a module in ``HEAVY``, or a project module that loads one when imported), and
says so on its own line: ``# lazy: <reason>``. Anything else goes at module level; an import
cycle that this would create is fixed by moving code, not by hiding the import in a function.

``../shared/tools/layers.py`` prints the same cycle and layer figures for a checkout.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The packages and their layer, lowest first; a package may import its layer and lower ones.
LAYERS = {
    "util": 0,
    "mechanisms": 1,
    "corpus": 2,
    "engines": 2,
    "jobs": 3,
    "models": 4,
    "federation": 5,
    "service": 6,
}

#: Third-party modules heavy enough (seconds, hundreds of MB) to load only when used.
HEAVY = frozenset(
    {
        "flwr",
        "matplotlib",
        "onnx",
        "onnxruntime",
        "opacus",
        "peft",
        "pyspark",
        "sentence_transformers",
        "torch",
        "transformers",
    }
)

LAZY = "# lazy:"


@dataclass(frozen=True)
class Import:
    """One imported name of one import statement."""

    module: str  # the importing module, e.g. "models.training"
    line: int
    name: str  # absolute dotted name, e.g. "torch.nn" or "models.trainer"
    local: str | None  # the project module it loads (None: stdlib or third-party)
    in_function: bool
    type_checking: bool  # under ``if TYPE_CHECKING:`` (never executed)
    comment: str  # the comment on the statement's first line, "" if none

    def where(self) -> str:
        return f"{self.module}:{self.line}"


def project_modules(root: Path) -> dict[str, Path]:
    """Every module of the layered packages under ``root``: dotted name -> file."""
    modules: dict[str, Path] = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module that importing ``name`` loads last (longest known prefix)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _comments(source: str) -> dict[int, str]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {t.start[0]: t.string for t in tokens if t.type == tokenize.COMMENT}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    return [f"{base}.{alias.name}" for alias in node.names]


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every imported name of ``module``: ``from a import b`` is ``a.b`` when that is a
    module, ``a`` otherwise."""
    source = path.read_text(encoding="utf-8")
    comments = _comments(source)
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for name in _names(child, module, path.name == "__init__.py"):
                    local = _resolve(name, modules)
                    if isinstance(child, ast.ImportFrom) and name not in modules:
                        name = name.rpartition(".")[0]  # a name from a module, not a module
                    found.append(
                        Import(
                            module,
                            child.lineno,
                            name,
                            local,
                            in_function,
                            type_checking,
                            comments.get(child.lineno, ""),
                        )
                    )
            nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            guarded = isinstance(child, ast.If) and _is_type_checking(child.test)
            visit(child, in_function or nested, type_checking or guarded)

    visit(ast.parse(source, str(path)), False, False)
    return found


@dataclass
class Project:
    modules: dict[str, Path]
    imports: list[Import]

    def __repr__(self) -> str:  # what a failing test prints of its fixture
        return f"<{len(self.modules)} modules, {len(self.imports)} imported names>"


def scan(root: Path) -> Project:
    modules = project_modules(root)
    return Project(modules, [imp for m, p in modules.items() for imp in imports_of(m, p, modules)])


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def layer_violations(imports: Iterable[Import]) -> list[str]:
    """``a -> b`` for every import of a higher layer's module."""
    return sorted(
        {
            f"{imp.module} -> {imp.local} ({imp.where()})"
            for imp in imports
            if imp.local and _layer(imp.local) > _layer(imp.module)
        }
    )


class _Tarjan:
    """Strongly connected components of a directed graph (Tarjan 1972); recursive, which the
    module graph (a hundred-odd nodes) allows."""

    def __init__(self, graph: dict[str, set[str]]) -> None:
        self.graph = graph
        self.index: dict[str, int] = {}
        self.low: dict[str, int] = {}
        self.stack: list[str] = []
        self.on_stack: set[str] = set()
        self.components: list[list[str]] = []

    def run(self) -> list[list[str]]:
        for v in sorted(self.graph):
            if v not in self.index:
                self._visit(v)
        return self.components

    def _visit(self, v: str) -> None:
        self.index[v] = self.low[v] = len(self.index)
        self.stack.append(v)
        self.on_stack.add(v)
        for w in sorted(self.graph[v]):
            if w not in self.index:
                self._visit(w)
                self.low[v] = min(self.low[v], self.low[w])
            elif w in self.on_stack:
                self.low[v] = min(self.low[v], self.index[w])
        if self.low[v] == self.index[v]:
            self.components.append(self._pop_to(v))

    def _pop_to(self, v: str) -> list[str]:
        component: list[str] = []
        while not component or component[-1] != v:
            component.append(self.stack.pop())
            self.on_stack.discard(component[-1])
        return component


def cycles(modules: Iterable[str], imports: Iterable[Import]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module, over every
    import, function-level and TYPE_CHECKING ones included."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.local and imp.local != imp.module:
            graph[imp.module].add(imp.local)
    return sorted(sorted(c) for c in _Tarjan(graph).run() if len(c) > 1)


def heavy_modules(imports: Iterable[Import]) -> set[str]:
    """The project modules whose import loads a ``HEAVY`` module (through module-level,
    executed imports)."""
    imports = [i for i in imports if not i.in_function and not i.type_checking]
    heavy = {i.module for i in imports if not i.local and i.name.split(".")[0] in HEAVY}
    while True:
        more = {i.module for i in imports if i.local in heavy} - heavy
        if not more:
            return heavy
        heavy |= more


def unjustified_lazy_imports(imports: list[Import]) -> list[str]:
    """Function-level imports that are not of a heavy module, or do not say why."""
    heavy = heavy_modules(imports)
    found = []
    for imp in imports:
        if not imp.in_function:
            continue
        is_heavy = imp.local in heavy if imp.local else imp.name.split(".")[0] in HEAVY
        reason = imp.comment[len(LAZY) :].strip() if imp.comment.startswith(LAZY) else ""
        if not is_heavy:
            found.append(f"{imp.where()} {imp.name}: not heavy, import it at module level")
        elif not reason:
            found.append(f"{imp.where()} {imp.name}: no '{LAZY} <reason>' comment")
    return list(dict.fromkeys(found))  # one finding per name and line


@pytest.fixture(scope="module")
def project() -> Project:
    found = scan(ROOT)
    assert {"util.atomic", "mechanisms.laplace", "models.trainer", "service.app"} <= set(
        found.modules
    )
    return found


def test_imports_follow_the_layers(project: Project) -> None:
    found = layer_violations(project.imports)
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_no_import_cycle(project: Project) -> None:
    found = cycles(project.modules, project.imports)
    assert not found, "import cycles:\n" + "\n".join(" ".join(c) for c in found)


def test_function_level_imports_are_lazy_for_a_reason(project: Project) -> None:
    found = unjustified_lazy_imports(project.imports)
    assert not found, "function-level imports:\n" + "\n".join(found)


FAKE = {
    "util/__init__.py": "",
    "util/u.py": "import json\n",
    "mechanisms/__init__.py": "",
    "mechanisms/up.py": "from service import x\nfrom util import u\n",
    "corpus/__init__.py": "",
    "corpus/p.py": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from corpus.q import Q\n"
    ),
    "corpus/q.py": "from . import p\nclass Q: ...\n",
    "models/__init__.py": "",
    "models/t.py": "import torch.nn\n",
    "models/u.py": (
        "def f():\n    import torch  # lazy: training only\n"
        "def g():\n    import json\n"
        "def h():\n    from models import t  # lazy: loads torch\n"
        "def k():\n    from .t import nn\n"
        "def m():\n    import onnx  # a comment, not a reason\n"
        "def n():\n    from models.v import w  # lazy: v is light\n"
    ),
    "models/v.py": "w = 1\n",
    "service/__init__.py": "",
    "service/x.py": "import service.y\n",
    "service/y.py": "def f():\n    from service import x  # lazy: no\n",
}


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    """Each check fails on a tree built to break it (a test that cannot fail is a defect)."""
    for name, text in FAKE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    fake = scan(tmp_path)
    assert layer_violations(fake.imports) == ["mechanisms.up -> service.x (mechanisms.up:1)"]
    assert cycles(fake.modules, fake.imports) == [
        ["corpus.p", "corpus.q"],
        ["service.x", "service.y"],
    ]
    assert unjustified_lazy_imports(fake.imports) == [
        "models.u:4 json: not heavy, import it at module level",
        "models.u:8 models.t: no '# lazy: <reason>' comment",
        "models.u:10 onnx: no '# lazy: <reason>' comment",
        "models.u:12 models.v: not heavy, import it at module level",
        "service.y:2 service.x: not heavy, import it at module level",
    ]
