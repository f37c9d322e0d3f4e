"""The house stays as drawn in CONTRIBUTING.md: the import graph of ``prrt``, built from the source with ``ast``.

Subpackages form layers (:data:`LAYERS`, bottom first); a module imports only from its own subpackage or from
layers below it, another subpackage only through its face (``__init__``, which lists in ``__all__`` what the
others may use), never a name that begins with ``_`` from another module, and never in a circle. Imports
between our modules sit at the top of the file; an exception names its reason in a comment on that line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "prrt"
#: The layers, bottom first: a unit may import from the units before it (and from itself), never after it.
LAYERS = ["timing", "profiles", "provenance", "evaluation", "imaging", "data", "learn", "explain", "study", "runner", "cli"]
#: At most this share of the imports between our modules may sit inside a function (each with its reason).
MAX_SHARE_INSIDE_FUNCTIONS = 0.10
MAX_MODULE_LINES = 500


@dataclass(frozen=True)
class Import:
    module: str        # the importing module, e.g. "prrt.learn.loop"
    target: str        # the module imported from, e.g. "prrt.evaluation"
    names: tuple       # the names imported ("*" for a plain ``import``)
    line: int
    in_function: bool
    reason: str        # the comment on the import's first line ("" when none)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every import of a module of ``root``'s package by the module at ``path``."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found = [(target, tuple(a.name for a in node.names))]
        elif isinstance(node, ast.Import):
            found = [(a.name, ("*",)) for a in node.names]
        else:
            continue
        inside, up = False, node
        while up in parents:
            up = parents[up]
            inside = inside or isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef))
        comment = lines[node.lineno - 1].partition("#")[2].strip()
        for target, names in found:
            if target == root.name or target.startswith(root.name + "."):
                out.append(Import(name, target, names, node.lineno, inside, comment))
    return out


def import_graph(root: Path = PACKAGE) -> tuple[set[str], list[Import]]:
    """The modules of the package and every import between them (a name imported from a package that is a
    module of it, ``from prrt.learn import loop``, counts as an import of that module)."""
    modules = {module_name(p, root) for p in root.rglob("*.py")}
    # a name that a package's __init__ defines or imports is that name, even where a module is called the same
    # (``from prrt.evaluation import calibration`` is the function of the face, not the module)
    face_names = {module_name(p, root): {a.asname or a.name for n in ast.parse(p.read_text()).body
                                         if isinstance(n, ast.ImportFrom) for a in n.names}
                  for p in root.rglob("__init__.py")}
    imports = []
    for path in sorted(root.rglob("*.py")):
        for imp in imports_of(path, root):
            submodules = {f"{imp.target}.{n}" for n in imp.names
                          if n not in face_names.get(imp.target, set())} & modules
            imports += [Import(imp.module, m, ("*",), imp.line, imp.in_function, imp.reason) for m in submodules]
            rest = tuple(n for n in imp.names if f"{imp.target}.{n}" not in modules)
            if rest:
                imports.append(Import(imp.module, imp.target, rest, imp.line, imp.in_function, imp.reason))
    return modules, imports


def unit(module: str, root_name: str = "prrt") -> str:
    """The subpackage or top-level module a module belongs to (``prrt.learn.loop`` → ``learn``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else root_name


def circles(modules: set[str], imports: list[Import]) -> list[list[str]]:
    """The import circles between modules (strongly connected components of more than one module, or a module
    importing itself), by Tarjan's algorithm. A package's ``__init__`` counts as a module, so that a face which
    imports a module that imports the face back is a circle too."""
    graph = {m: sorted({i.target for i in imports if i.module == m and i.target in modules}) for m in modules}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return found


def upward_arrows(imports: list[Import], layers=LAYERS) -> list[Import]:
    """Imports from a unit of a higher layer, or from a unit that is in no layer."""
    bad = []
    for i in imports:
        a, b = unit(i.module), unit(i.target)
        if a != b and (a not in layers or b not in layers or layers.index(b) > layers.index(a)):
            bad.append(i)
    return bad


def around_the_face(imports: list[Import]) -> list[Import]:
    """Imports of another subpackage's inner module instead of its face (its ``__init__``)."""
    return [i for i in imports if unit(i.module) != unit(i.target) and i.target.count(".") > 1]


def private_names(imports: list[Import]) -> list[tuple[Import, str]]:
    """Names that begin with ``_`` imported from another module."""
    return [(i, n) for i in imports if i.target != i.module for n in i.names if n.startswith("_")]


def not_in_face(imports: list[Import], root: Path = PACKAGE) -> list[tuple[Import, str]]:
    """Names imported from another subpackage's face that its ``__all__`` does not list."""
    faces = {}
    for init in root.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        listed = [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and any(getattr(t, "id", "") == "__all__" for t in n.targets)]
        faces[module_name(init, root)] = set(ast.literal_eval(listed[0])) if listed else set()
    return [(i, n) for i in imports if i.target in faces and unit(i.module) != unit(i.target) for n in i.names
            if n != "*" and n not in faces[i.target]]


# ---- the checks themselves, on a small made-up package ---------------------------------------------------
def _package(tmp_path, files: dict[str, str]) -> Path:
    root = tmp_path / "prrt"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_find_what_they_look_for(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "evaluation/__init__.py": "from .metrics import auroc\n__all__ = ['auroc']\n",
        "evaluation/metrics.py": "from ..learn import fit\ndef auroc(): ...\ndef _helper(): ...\n",
        "learn/__init__.py": "from .loop import fit\n__all__ = ['fit']\n",
        "learn/loop.py": ("from ..evaluation import auroc\nfrom ..evaluation.metrics import _helper\n"
                          "from ..evaluation import secret\n"
                          "def fit():\n    from .other import g  # a reason\n"),
        "learn/other.py": "def g(): ...\n",
    })
    modules, imports = import_graph(root)
    assert circles(modules, imports) == [["prrt.evaluation", "prrt.evaluation.metrics", "prrt.learn",
                                          "prrt.learn.loop"]]
    assert [(i.module, i.target) for i in upward_arrows(imports)] == [("prrt.evaluation.metrics", "prrt.learn")]
    assert [(i.module, n) for i, n in private_names(imports)] == [("prrt.learn.loop", "_helper")]
    assert [i.target for i in around_the_face(imports)] == ["prrt.evaluation.metrics"]
    assert [n for _, n in not_in_face(imports, root)] == ["secret"]
    inside = [i for i in imports if i.in_function]
    assert [(i.module, i.target, i.reason) for i in inside] == [("prrt.learn.loop", "prrt.learn.other", "a reason")]


# ---- on prrt ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_package_is_made_of_the_layers(graph):
    modules, _ = graph
    units = {unit(m) for m in modules if m != "prrt"}
    assert units == set(LAYERS), f"a unit outside the layers (add it to LAYERS and CONTRIBUTING.md): {units - set(LAYERS)}"
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert len(subpackages) >= 6, subpackages


def test_no_import_circle(graph):
    assert circles(*graph) == []


def test_arrows_point_down(graph):
    bad = upward_arrows(graph[1])
    assert not bad, "imports against the layers " + " > ".join(LAYERS) + ":\n" + "\n".join(
        f"  {i.module} (line {i.line}) imports {i.target}" for i in bad)


def test_other_subpackages_are_reached_through_their_faces(graph):
    around = [f"  {i.module} (line {i.line}) imports {i.target}, a module inside another subpackage"
              for i in around_the_face(graph[1])]
    unlisted = [f"  {i.module} (line {i.line}) imports {n} from {i.target}, whose __all__ does not list it"
                for i, n in not_in_face(graph[1])]
    assert not around + unlisted, "\n".join(around + unlisted)


def test_no_private_name_crosses_a_module(graph):
    bad = private_names(graph[1])
    assert not bad, "\n".join(f"  {i.module} (line {i.line}) imports {n} from {i.target}" for i, n in bad)


def test_imports_sit_at_the_top_and_an_exception_says_why(graph):
    _, imports = graph
    inside = [i for i in imports if i.in_function]
    assert len(inside) <= MAX_SHARE_INSIDE_FUNCTIONS * len(imports), f"{len(inside)} of {len(imports)} inside functions"
    unexplained = [i for i in inside if not i.reason]
    assert not unexplained, "imports inside functions without a reason (a comment on the line):\n" + "\n".join(
        f"  {i.module} (line {i.line}) imports {i.target}" for i in unexplained)


def test_every_face_lists_what_it_imports():
    for init in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        listed = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and any(getattr(t, "id", "") == "__all__" for t in n.targets)]
        assert listed, f"{init} has no __all__"
        assert set(listed[0]) == imported, f"{init}: __all__ and the imports differ by {set(listed[0]) ^ imported}"


def test_no_module_is_over_the_limit():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them at a seam): {long}"
