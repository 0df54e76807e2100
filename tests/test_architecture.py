"""The package's shape, read from its source: floors (stages never import each other), no import cycle, no in-package
import inside a function, no `;`-joined statement, lines within 120 characters, complete module docstrings, a
docstring on every public function and class, and docs/ARCHITECTURE.md naming every module and run-folder path."""
import ast, io, re, tokenize
from pathlib import Path

import pytest

from conftest import ROOT

PKG = ROOT / "longctx_nb"
MODULES = sorted(p for p in PKG.glob("*.py") if p.name not in ("__init__.py", "_modidx.py"))
STAGES = {"mixture", "upsample", "extend", "synth", "packing", "distributed", "needle", "longbench_chat",
          "benchmarks"}
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def tree(p: Path) -> ast.Module:
    return ast.parse(p.read_text(encoding="utf-8"))


def in_package(node) -> str | None:
    "The longctx_nb module an import names (None for other packages)."
    if isinstance(node, ast.ImportFrom):
        if node.level:
            return (node.module or "").split(".")[0] or None
        if (node.module or "").startswith("longctx_nb."):
            return node.module.split(".")[1]
    return None


def imports(p: Path) -> set[str]:
    return {m for n in ast.walk(tree(p)) if (m := in_package(n))}


def test_stages_import_no_stage_and_no_cycle():
    graph = {p.stem: imports(p) for p in MODULES}
    for mod in STAGES & graph.keys():
        assert not graph[mod] & STAGES, f"stage module {mod} imports stage {graph[mod] & STAGES}"
    for mod in graph.keys() - STAGES:
        assert not graph[mod] & STAGES, f"shared module {mod} imports stage {graph[mod] & STAGES}: a floor up"
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in graph.get(m, ()):
            assert state.get(n) != "open", f"import cycle: {' -> '.join(path + [n])}"
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"
    for m in graph:
        if m not in state:
            visit(m, [m])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_text(path):
    src = path.read_text(encoding="utf-8")
    t = ast.parse(src)
    long = [i for i, line in enumerate(src.splitlines(), 1) if len(line) > 120
            and not line.startswith("__all__ = ")]  # nbdev wraps `__all__` at 120 before prefixing its name
    assert not long, f"{path.name}: lines over 120 characters: {long[:10]}"
    semi = [tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(src).readline)
            if tok.type == tokenize.OP and tok.string == ";"]
    assert not semi, f"{path.name}: `;`-joined statements at lines {semi[:10]}"
    inner = [n.lineno for f in ast.walk(t) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if in_package(n)]
    assert not inner, f"{path.name}: in-package imports inside functions at lines {inner}"
    doc = ast.get_docstring(t)
    assert doc and re.search(r"[.!?)]$", doc.strip()), f"{path.name}: module docstring missing or cut: {doc!r}"
    bare = [n.name for n in t.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
            and not n.name.startswith("_") and not ast.get_docstring(n)]
    assert not bare, f"{path.name}: public names without a docstring: {bare}"


def test_architecture_doc_names_every_module_and_path():
    text = DOC.read_text(encoding="utf-8")
    missing = [p.stem for p in MODULES if f"`{p.stem}`" not in text]
    assert not missing, f"{DOC.name} does not name modules {missing}"
    run_dir = next(n for n in tree(PKG / "core.py").body if isinstance(n, ast.ClassDef) and n.name == "RunDir")
    names = [n.name for n in run_dir.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
    unnamed = [n for n in names if not re.search(rf"`{n}[`(]", text)]
    assert not unnamed, f"{DOC.name} does not name RunDir's {unnamed}"
