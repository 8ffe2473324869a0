"""Fuzzing load: a mutated model file either loads into a graph that passes check_graph and
runs, or is refused with IRFileError; never another exception, never a hang.

Mutations of a valid saved model (eqm_craft.small_files, both levels): random byte flips (with
and without a recomputed SHA-256), any field of the JSON document replaced by a random JSON
value, the safetensors header's dtype/shape/data_offsets changed, and node targets replaced
by random strings or real torch op names. A graph that loads is run on the traced example
input; the only errors allowed there are clear ones that name the node (``run`` adds "while
running node ...") or the input. Examples are derandomized, so CI runs the same cases.
"""
import json
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from edgequant.check import check_graph
from edgequant.serialize import IRFileError, loads

from eqm_craft import fix_checksum, rebuild, small_files, split, st_join, st_split

SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
LEVELS = st.sampled_from(["quant", "int"])
REAL_OPS = sorted(f"aten.{n}.default" for n in dir(torch.ops.aten) if not n.startswith("_"))[::7] + [
    "aten.from_file.default", "aten.save.default", "aten.empty.memory_format", "aten.full.default",
    "aten.new_zeros.default", "aten.repeat.default", "aten.arange.default", "aten.add.Tensor",
    "import_module.__call__.__call__", "_operator.mul", "segment_lut", "edgequant.nn.stubs.dequant_point"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.integers(-2 ** 70, 2 ** 70) | st.sampled_from(
        [10 ** 12, -1, 2 ** 63, 0]) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
    | st.sampled_from([{"$in": 0}, {"$in": 9}, {"$dtype": "int64"}, {"$dtype": "x"}, {"$float": "nan"},
                       {"$memory_format": "load"}, {"$device": "cpu"}, "s0", "aten.add.Tensor"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def paths(x, prefix=()):
    """Every path to a field of a JSON document (dict keys and list indices)."""
    yield prefix
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    for k, v in items:
        yield from paths(v, prefix + (k,))


def replaced(doc, path, value):
    if not path:
        return value
    doc = json.loads(json.dumps(doc))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    parent[path[-1]] = value
    return doc


def outcome(data: bytes) -> str:
    """Load ``data`` and run it; fail the test on anything but a clean refusal or a clear error."""
    t = time.perf_counter()
    try:
        g = loads(data)
    except IRFileError:
        return "refused"
    check_graph(g, from_file=True)
    try:
        g(small_files()["x"])
        result = "ran"
    except (RuntimeError, ValueError, TypeError) as exc:
        msg = str(exc)
        assert "while running node" in msg or "input" in msg, f"{type(exc).__name__} without a node: {msg[:300]}"
        # run wraps a kernel's IndexError/KeyError/... as a RuntimeError naming the node; check_graph
        # should have refused such a file before it ran
        assert not isinstance(exc.__cause__, (LookupError, AttributeError, ArithmeticError, AssertionError)), msg[:300]
        result = "clear error"
    assert time.perf_counter() - t < 10, "loading and running one file took over 10 s"
    return result


@settings(max_examples=60, **SETTINGS)
@given(level=LEVELS, flips=st.lists(st.tuples(st.integers(0, 2 ** 31), st.integers(1, 255)), min_size=1, max_size=4),
       fix=st.booleans())
def test_byte_flips(level, flips, fix):
    data = bytearray(small_files()[level])
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    outcome(fix_checksum(bytes(data)) if fix else bytes(data))


@settings(max_examples=250, **SETTINGS)
@given(level=LEVELS, pick=st.integers(0, 2 ** 31), value=json_values)
def test_json_field_mutations(level, pick, value):
    doc = split(small_files()[level])[1]
    every = list(paths(doc))
    outcome(rebuild(small_files()[level], replaced(doc, every[pick % len(every)], value)))


@settings(max_examples=60, **SETTINGS)
@given(level=LEVELS, pick=st.integers(0, 2 ** 31), field=st.sampled_from(["dtype", "shape", "data_offsets"]),
       value=st.sampled_from(["F64", "I8", "BOOL", "U16", "F8_E4M3", None, [], [10 ** 12], [1, 0], [0, 2 ** 62],
                              [-1, 4], [3, 2], [0, 0], 7, "x"]))
def test_safetensors_header_mutations(level, pick, field, value):
    _, _, blob = split(small_files()[level])
    header, data = st_split(blob)
    names = sorted(k for k in header if k != "__metadata__")
    header[names[pick % len(names)]][field] = value
    outcome(rebuild(small_files()[level], blob=st_join(header, data)))


@settings(max_examples=80, **SETTINGS)
@given(level=LEVELS, pick=st.integers(0, 2 ** 31), target=st.sampled_from(REAL_OPS) | st.text(max_size=30),
       as_aten=st.booleans())
def test_target_substitutions(level, pick, target, as_aten):
    doc = split(small_files()[level])[1]
    n = doc["nodes"][pick % len(doc["nodes"])]
    n["attrs"]["target"] = target
    n["attrs"].setdefault("args", [{"$in": 0}] if n["inputs"] else [])
    n["attrs"].setdefault("kwargs", {})
    if as_aten:
        n["op"] = "aten"
    assert outcome(rebuild(small_files()[level], doc)) in ("refused", "ran", "clear error")


def test_deeply_nested_json_is_refused():
    doc = split(small_files()["int"])[1]
    body = json.dumps(doc).encode()
    deep = body[:-1] + b',"x":' + b"[" * 100000 + b"]" * 100000 + b"}"
    with pytest.raises(IRFileError, match="malformed contents"):
        loads(rebuild(small_files()["int"], deep))
