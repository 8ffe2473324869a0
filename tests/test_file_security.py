"""A model file is data: every way a crafted .eqm could name code to run is refused by load.

Each test takes a valid saved model (eqm_craft.small_files: a residual CNN through prepare,
calibrate, export, convert and dumps), plants one payload with a correct SHA-256, and asserts
that ``loads`` raises ``IRFileError`` naming the node (or key) and the bad name, and that the
payload's marker file was never created (also after running the graph, where a load is
allowed). References: the file layout of docs/ir.md section 5, and markers on disk that only
the payload's side effect could create.
"""
import json
import time

import pytest
import torch

from edgequant.check import check_graph
from edgequant.lut import report
from edgequant.serialize import IRFileError, loads

from eqm_craft import rebuild, small_files, split, st_join, st_split


def doc_of(level="int"):
    return split(small_files()[level])[1]


def node(doc, name):
    return next(n for n in doc["nodes"] if n["name"] == name)


def refused(data: bytes, *patterns: str) -> str:
    with pytest.raises(IRFileError) as info:
        g = loads(data)
        g(small_files()["x"])               # a load that let the payload through: run it, as a user would
    msg = str(info.value)
    for p in patterns:
        assert p in msg, msg
    return msg


def with_call(level: str, name: str, target, args, kwargs=None, op=None) -> bytes:
    """The file of ``level`` whose node ``name`` calls ``target(*args, **kwargs)``."""
    doc = doc_of(level)
    n = node(doc, name)
    n["attrs"] = {**n["attrs"], "target": target, "args": args, "kwargs": kwargs or {}}
    if op is not None:
        n["op"] = op
    return rebuild(small_files()[level], doc)


# -- the reported route: torch.ops.import_module through a target name --------------------------------
@pytest.mark.parametrize("level", ["quant", "int"])
def test_target_naming_torch_ops_import_module_is_refused(tmp_path, monkeypatch, level):
    marker = tmp_path / "imported.txt"
    (tmp_path / "eq_payload_mod.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = with_call(level, "reshape", "import_module.__call__.__call__", ["eq_payload_mod"], op="aten")
    refused(data, "node 'reshape'", "'import_module.__call__.__call__'")
    assert not marker.exists()


def test_an_aten_op_that_writes_files_is_refused(tmp_path):
    # aten.from_file(filename, shared=True, size) creates the file: an aten name is not enough
    marker = tmp_path / "from_file.bin"
    data = with_call("int", "max_pool", "aten.from_file.default", [str(marker), True, 4], op="aten")
    refused(data, "node 'max_pool'", "'aten.from_file.default'")
    assert not marker.exists()


@pytest.mark.parametrize("target", ["builtins.exec.default", "prims.device_put.default", "torch.save.default",
                                    "aten.save.default", "aten.__class__.__init__", "aten.add", "os.system",
                                    "_operator.getitem", "aten.._foo"])
def test_targets_off_the_allow_list_are_refused(target):
    data = with_call("quant", "max_pool", target, [{"$in": 0}, 2])
    refused(data, "node 'max_pool'", repr(target))


def test_a_target_that_is_not_a_string_is_refused():
    refused(with_call("int", "max_pool", ["aten", "add", "Tensor"], [{"$in": 0}]), "node 'max_pool'", "target")


def test_a_marker_target_cannot_be_called():
    # 'segment_lut' names no op: a node that would call it is refused, not run
    refused(with_call("quant", "max_pool", "segment_lut", [{"$in": 0}]), "node 'max_pool'", "'segment_lut'")


# -- names decode() resolves ------------------------------------------------------------------------------
@pytest.mark.parametrize("marker, value", [
    ("$memory_format", "load"), ("$memory_format", "ops"), ("$memory_format", "__builtins__"),
    ("$dtype", "__class__"), ("$dtype", "float128"), ("$dtype", "complex64"),
    ("$device", "cpu; touch x"), ("$device", "file:///etc/passwd"), ("$float", "__import__('os')"),
])
def test_decoded_names_off_the_allow_list_are_refused(marker, value):
    data = with_call("quant", "reshape", "aten.flatten.using_ints", [{"$in": 0}, 1], {"memory_format": {marker: value}})
    refused(data, "node 'reshape'", marker, repr(value)[:20])


def test_memory_format_named_torch_load_never_reaches_getattr(tmp_path):
    marker = tmp_path / "loaded"
    data = with_call("quant", "reshape", "aten.clone.default", [{"$in": 0}], {"memory_format": {"$memory_format": "load"}})
    refused(data, "'load'")
    assert not marker.exists()


@pytest.mark.parametrize("bad", [{"$in": 5}, {"$in": -1}, {"$in": "0"}, {"$in": 0, "$dtype": "int64"}])
def test_input_references_must_name_the_nodes_inputs(bad):
    refused(with_call("int", "max_pool", "aten.max_pool2d.default", [bad, [2, 2]]), "node 'max_pool'", "$in")


def test_args_and_kwargs_must_be_a_list_and_a_dict():
    refused(with_call("int", "max_pool", "aten.max_pool2d.default", {"0": {"$in": 0}}), "attrs['args'] must be a list")
    refused(with_call("int", "max_pool", "aten.max_pool2d.default", [{"$in": 0}], kwargs=[1]),
            "attrs['kwargs'] must be a dict")


# -- op names, callables and in-memory meta -----------------------------------------------------------------
@pytest.mark.parametrize("op", ["exec", "__import__", "float_call_", "Conv2d"])
def test_unknown_op_names_are_refused(op):
    doc = doc_of("int")
    node(doc, "max_pool")["op"] = op
    refused(rebuild(small_files()["int"], doc), "node 'max_pool'", repr(op))


@pytest.mark.parametrize("op", ["float_call", "segment_lut"])
def test_nodes_that_run_python_callables_are_refused(op):
    doc = doc_of("quant")
    n = node(doc, "max_pool")
    n["op"] = op
    n["attrs"] = {**n["attrs"], "target": "builtins.exec", "callable_ref": "os.system", "module": "os"}
    refused(rebuild(small_files()["quant"], doc), "node 'max_pool'", "Python callable")


@pytest.mark.parametrize("key, value", [("_callables", {"max_pool": "builtins.exec"}),
                                        ("_pytree_out_spec", "builtins.exec"), ("_pytree_in_spec", [1])])
def test_in_memory_meta_keys_cannot_come_from_a_file(key, value):
    doc = doc_of("quant")
    doc["meta"][key] = value
    refused(rebuild(small_files()["quant"], doc), repr(key))


def test_an_out_spec_naming_a_custom_class_is_refused():
    doc = doc_of("int")
    doc["meta"]["out_spec"] = json.dumps([1, {"type": "os._wrap_close", "context": "null", "children_spec": []}])
    refused(rebuild(small_files()["int"], doc), "out_spec")


def test_report_of_a_loaded_graph_resolves_only_allow_listed_targets(tmp_path):
    # lut.report rebuilds a table op's function from its target; the file cannot name another
    doc = doc_of("int")
    doc["nodes"][1]["attrs"]["target"] = "aten.from_file.default"
    refused(rebuild(small_files()["int"], doc), "'aten.from_file.default'")
    assert report(loads(small_files()["int"])) == []


# -- sizes a file claims ------------------------------------------------------------------------------------
def test_a_safetensors_header_declaring_huge_tensors_is_refused_before_loading():
    prefix, doc, blob = split(small_files()["int"])
    header, data = st_split(blob)
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [10 ** 6, 10 ** 6]
    t = time.perf_counter()
    refused(rebuild(small_files()["int"], blob=st_join(header, data)), name, "needs")
    header[name]["data_offsets"] = [0, 10 ** 13]
    refused(rebuild(small_files()["int"], blob=st_join(header, data)), "outside")
    assert time.perf_counter() - t < 5


def test_a_declared_value_shape_allocates_nothing():
    doc = doc_of("int")
    v = next(v for v in doc["values"] if v["name"] == doc["inputs"][0])
    v["shape"] = [10 ** 12, 1, 8, 8]
    g = loads(rebuild(small_files()["int"], doc))          # a claim only: nothing is allocated from it
    with pytest.raises(ValueError, match="traced with"):
        g(small_files()["x"])


@pytest.mark.parametrize("target, args", [
    ("aten.new_zeros.default", [{"$in": 0}, [10 ** 6, 10 ** 6]]),
    ("aten.repeat.default", [{"$in": 0}, [1000, 1000, 1000, 1000]]),
    ("aten.constant_pad_nd.default", [{"$in": 0}, [10 ** 6, 10 ** 6], 0]),
    ("aten.im2col.default", [{"$in": 0}, [10 ** 6, 10 ** 6], [1, 1], [0, 0], [1, 1]]),
    ("aten.col2im.default", [{"$in": 0}, [10 ** 6, 10 ** 6], [2, 2], [1, 1], [0, 0], [2, 2]]),
])
def test_argument_sizes_are_bounded_by_the_tensors_in_the_file(target, args):
    refused(with_call("int", "max_pool", target, args, op="aten"), "node 'max_pool'",
            "exceeds" if "pad" in target or "col" in target else "elements")


@pytest.mark.parametrize("dim", [-1, "s0; import os", "", True, 2.5])
def test_dims_are_non_negative_ints_or_symbol_names(dim):
    doc = doc_of("int")
    doc["values"][3]["shape"][0] = dim
    refused(rebuild(small_files()["int"], doc), repr(doc["values"][3]["name"]))


# -- attrs their kernels read --------------------------------------------------------------------------------
@pytest.mark.parametrize("name, key, value", [
    ("stem.0", "carrier", "float128"), ("stem.0", "stride", "1"), ("stem.0", "x_zero_point", None),
    ("stem.0", "output", "exec"), ("add", "terms", [{"in": 7, "zp": 0, "m0": 1}]), ("add", "shift", [10 ** 30]),
    ("avg_pool", "starts", 5), ("head", "w_zero_point", [[0]]), ("add", "kernel", "exec"),
])
def test_kernel_attrs_with_wrong_types_are_refused(name, key, value):
    doc = doc_of("int")
    node(doc, name)["attrs"][key] = value
    refused(rebuild(small_files()["int"], doc), f"node {name!r}", "term" if key == "terms" else repr(key))


def test_the_untouched_files_load_run_and_pass_check_graph():
    x = small_files()["x"]
    for level in ("quant", "int"):
        g = loads(small_files()[level])
        check_graph(g, from_file=True)
        assert g(x).shape == (2, 10)
    assert torch.equal(loads(small_files()["int"])(x), loads(small_files()["int"])(x))
