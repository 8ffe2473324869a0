"""The package's shape, read statically from its sources (issue 16):

- its import graph has no cycle (every ``import``, at module level or inside a function, is an
  edge; ``from pkg import name`` is an edge to the submodule ``pkg.name`` when there is one, and
  importing ``a.b.c`` is also an edge to the packages ``a.b`` it runs first; the one exception is
  a package ``__init__``'s module-level ``__getattr__`` (PEP 562), which re-exports a higher
  layer on first use, after every module has loaded: ``edgequant.lut.report``);
- no module under ``edgequant/`` exceeds 500 lines;
- no code outside ``edgequant/ops/`` branches on an op's name: no comparison (``==``, ``!=``,
  ``in``, ``not in``) of an op, a spec's name, a table kind or a call target against a string
  that names an op, no dict literal keyed by op names and no list, tuple or set literal of op
  names (a parallel op table), no ``OPS["name"]`` lookup. Stages read the rows' fields instead.
"""
import ast
import re
from pathlib import Path

import pytest

from edgequant.ops import ALL_SPECS
from edgequant.ops.names import op_names

PKG = Path(__file__).resolve().parent.parent / "edgequant"
MAX_LINES = 500


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def _is_module(mods, name: str) -> bool:
    """A Python module of the package, or a compiled one (``observers._binning``)."""
    if name in mods:
        return True
    base = PKG.parent.joinpath(*name.split("."))
    return any(base.parent.glob(base.name + ".*"))


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text())
        lazy = {id(n) for f in tree.body if is_pkg and isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
                for n in ast.walk(f)}
        for node in ast.walk(tree):
            if id(node) in lazy:   # a package's PEP 562 re-export of a higher layer, loaded on first use
                continue
            if isinstance(node, ast.Import):
                edges[mod] |= {a.name for a in node.names if a.name.split(".")[0] == "edgequant"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "edgequant":
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    edges[mod].add(sub if _is_module(mods, sub) else target)
    # importing ``a.b.c`` first runs the packages ``a`` and ``a.b``: edges to those, except to the
    # importer's own ancestors (already running when it imports)
    for mod, es in edges.items():
        ancestors = {".".join(mod.split(".")[:k]) for k in range(1, len(mod.split(".")))}
        for e in list(es):
            parts = e.split(".")
            es |= {".".join(parts[:k]) for k in range(2, len(parts))} - ancestors
    return {m: {e for e in es if e in mods and e != m} for m, es in edges.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or self-loops."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_import_graph_has_no_cycle():
    found = cycles(import_graph())
    edges = import_graph()
    detail = "\n".join(f"{c}: " + "; ".join(f"{a} -> {sorted(edges[a] & set(c))}" for a in c) for c in found)
    assert not found, f"import cycles:\n{detail}"


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("path", sorted(str(p.relative_to(PKG.parent)) for p in PKG.rglob("*.py")))
def test_module_is_small(path):
    n = len((PKG.parent / path).read_text().splitlines())
    assert n <= MAX_LINES, f"{path} has {n} lines (at most {MAX_LINES}: split it along its stages)"


# -- op names outside ops/ ----------------------------------------------------------------------------
OP_NAMES = frozenset(op_names()) | {s.table for s in ALL_SPECS if s.table}
# the operand that holds an op's identity: node.op, op, spec.name, a table kind, a call target
_OP_SIDE = re.compile(r"(^|\W)(op|kind|target)(\W|$)|\.op\b|spec|\.name\b|\[['\"](kind|target)['\"]\]")
# reduction modes and statistics that share a word with an op (distributed collectives, observers)
_WORDS = frozenset({"max", "min", "sum", "mean"})


def _strings(node) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    return []


def op_name_branches(source: str) -> list[tuple[int, str]]:
    found = []
    tree = ast.parse(source)
    exported = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and id(node) not in exported:
            ops = [s for s in _strings(node) if s in OP_NAMES]
            if len(ops) >= 2 and len(set(ops) - _WORDS) >= 1:
                found.append((node.lineno, "a list of op names: " + ", ".join(ops)))
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "OPS" \
                and _strings(node.slice):
            found.append((node.lineno, ast.unparse(node)))
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for k, side in enumerate(sides):
                names = [s for s in _strings(side) if s in OP_NAMES]
                others = [ast.unparse(o) for j, o in enumerate(sides) if j != k]
                if names and any(_OP_SIDE.search(o) for o in others):
                    found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            ops = [k for k in keys if k in OP_NAMES]
            if len(ops) >= 2 and len(set(ops) - _WORDS) >= 1:
                found.append((node.lineno, "dict keyed by " + ", ".join(ops)))
    return found


def test_the_op_name_detector_finds_branches():
    assert op_name_branches("if node.op == 'conv2d': pass")
    assert op_name_branches("x = spec.name in ('linear', 'matmul')")
    assert op_name_branches("T = {'softmax': 1, 'layer_norm': 2}")
    assert op_name_branches("if lut['kind'] == 'div': pass")
    assert not op_name_branches("if 'lut' in node.attrs: pass")
    assert not op_name_branches("if how == 'max': pass")
    assert not op_name_branches("R = {'max': 1, 'sum': 2}")
    assert op_name_branches("NEEDS = frozenset({'layer_norm', 'softmax'})")
    assert op_name_branches("spec = OPS['segment_lut']")
    assert not op_name_branches("__all__ = ['convert', 'export']")


def test_no_op_name_branches_outside_the_op_table():
    bad = []
    for p in sorted(PKG.rglob("*.py")):
        if p.relative_to(PKG).parts[0] == "ops":
            continue
        bad += [f"{p.relative_to(PKG.parent)}:{line}: {text[:100]}" for line, text in op_name_branches(p.read_text())]
    assert not bad, "code outside edgequant/ops/ branches on op names (read a row of the op table):\n" + "\n".join(bad)


# -- the rounding rule travels with the integer graph (MarchProfile.rounding, qmath.ROUNDING) ---------
def test_integer_graph_records_its_rounding_rule_and_the_checker_holds_it():
    import torch

    import edgequant as eq
    from edgequant.check import IRCheckError, check_graph
    from edgequant.march import PROFILES
    from edgequant.qconfig_template import default_calibration_qconfig_setter
    from edgequant.qmath import ROUNDING

    assert {p.rounding for p in PROFILES.values()} == {ROUNDING}
    m = torch.nn.Sequential(eq.QuantStub(), torch.nn.Linear(4, 3), eq.DeQuantStub()).eval()
    x = torch.randn(2, 4)
    cm = eq.prepare(m, (x,), qconfig_setter=(default_calibration_qconfig_setter,))
    eq.calibrate(cm, [(x,)])
    g = eq.convert(eq.export(cm, (x,)), "nash-e")
    assert g.meta["rounding"] == ROUNDING
    g.meta["rounding"] = "half_away_from_zero"
    with pytest.raises(IRCheckError, match="round 'half_away_from_zero'"):
        check_graph(g)


def test_lut_report_is_the_function_the_readme_names():
    import edgequant
    from edgequant.lut import format_report, report

    assert edgequant.lut.report is report and callable(report) and callable(format_report)
    assert report.__module__ == "edgequant.lut.quality"
