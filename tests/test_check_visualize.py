"""check_graph fires on each rule of docs/ir.md with a message naming the node or value;
visualize writes ONNX that passes the full checker and shows every tensor's type and scale.

References: small hand-built graphs (one per level) that each rule breaks in one place, and
the real graphs of export/convert, which must pass.
"""
import dataclasses
import json
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

import edgequant as eq
from edgequant.check import IRCheckError, check_graph
from edgequant.convert import ConvertError
from edgequant.ir import Graph, Node, QParams, Value
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16

from test_serialize import cnn, moves_graphs  # noqa: F401  (cnn is a fixture)
from seeds import decint, smallmodel

LINEAR = {"target": "aten.linear.default", "args": [{"$in": 0}, {"$in": 1}, {"$in": 2}], "kwargs": {}}


def int_graph() -> Graph:
    """quantize -> linear with qint4 weights and a qint32 bias (per-channel accumulator) -> dequantize."""
    values = [
        Value("x", ("s0", 4), "float32"),
        Value("w", (3, 4), "qint4", QParams("qint4", (0.1, 0.2, 0.3), (0, 0, 0), 0)),
        Value("b", (3,), "qint32", QParams("qint32", (0.005, 0.01, 0.015), (0, 0, 0), 0)),
        Value("xq", ("s0", 4), "qint8", QParams("qint8", (0.05,), (0,))),
        Value("acc", ("s0", 3), "qint32", QParams("qint32", (0.005, 0.01, 0.015), (0, 0, 0), 1)),
        Value("y", ("s0", 3), "float32"),
    ]
    nodes = [Node("quant", "quantize", ("x",), ("xq",), {}, "m.py:1"),
             Node("fc", "linear", ("xq", "w", "b"), ("acc",), dict(LINEAR, high_precision=True), "m.py:2"),
             Node("dequant", "dequantize", ("acc",), ("y",), {}, "m.py:3")]
    constants = {"w": torch.tensor([[-8, 7, 0, 1]] * 3, dtype=torch.int8), "b": torch.tensor([1, -2, 3], dtype=torch.int32)}
    return Graph("int", ["x"], ["y"], {v.name: v for v in values}, nodes, constants, {"march": "nash-m"})


def quant_graph() -> Graph:
    values = [
        Value("x", ("s0", 4), "float32"),
        Value("w", (3, 4), "float32", QParams("qint8", (0.1, 0.2, 0.3), (0, 0, 0), 0)),
        Value("b", (3,), "float32"),
        Value("xq", ("s0", 4), "float32", QParams("qint8", (0.05,), (0,))),
        Value("acc", ("s0", 3), "float32"),
        Value("y", ("s0", 3), "float32"),
    ]
    nodes = [Node("quant", "quantize", ("x",), ("xq",), {"fq": True}, "m.py:1"),
             Node("fc", "linear", ("xq", "w", "b"), ("acc",), dict(LINEAR, high_precision=True), "m.py:2"),
             Node("dequant", "dequantize", ("acc",), ("y",), {}, "m.py:3")]
    constants = {"w": torch.randn(3, 4), "b": torch.randn(3)}
    return Graph("quant", ["x"], ["y"], {v.name: v for v in values}, nodes, constants, {"march": "nash-m"})


def with_value(g: Graph, name: str, **changes) -> Graph:
    return dataclasses.replace(g, values={**g.values, name: dataclasses.replace(g.values[name], **changes)})


def with_qparams(g: Graph, name: str, **changes) -> Graph:
    return with_value(g, name, qparams=dataclasses.replace(g.values[name].qparams, **changes))


def with_node(g: Graph, name: str, **changes) -> Graph:
    return dataclasses.replace(g, nodes=[dataclasses.replace(n, **changes) if n.name == name else n for n in g.nodes])


def with_const(g: Graph, name: str, t) -> Graph:
    return dataclasses.replace(g, constants={**g.constants, name: t})


def rejects(g: Graph, pattern: str):
    with pytest.raises(IRCheckError, match=pattern):
        check_graph(g)


# -- the hand-built graphs are valid; each rule breaks them in one place ---------------------------------
def test_hand_built_graphs_pass():
    check_graph(int_graph())
    check_graph(quant_graph())


def test_g1_level():
    rejects(dataclasses.replace(int_graph(), level="float"), "unknown IR level 'float'")


def test_g2_records_and_inputs():
    g = int_graph()
    rejects(dataclasses.replace(g, values={**g.values, "x": g.values["y"]}), "value 'x': its record is named 'y'")
    rejects(dataclasses.replace(g, inputs=["x", "x"]), r"graph input\(s\) \['x'\] listed more than once")
    rejects(dataclasses.replace(g, inputs=["x", "w"]), "graph input 'w' is also a constant")
    values = dict(g.values)
    del values["x"]
    rejects(dataclasses.replace(g, values=values), "value 'x' has no record")


def test_g3_constants():
    g = int_graph()
    rejects(with_const(g, "w", torch.zeros(4, 3, dtype=torch.int8)), r"constant 'w' has shape \(4, 3\).*\(3, 4\)")
    rejects(with_const(g, "w", torch.zeros(3, 4)), "constant 'w' is qint4 but stored in a float32 tensor")
    rejects(with_const(g, "w", torch.full((3, 4), 8, dtype=torch.int8)),
            r"constant 'w' holds values in \[8, 8\], outside qint4's range \[-8, 7\]")
    q = quant_graph()
    rejects(with_const(q, "b", torch.zeros(3, dtype=torch.float64)), "constant 'b' is a float64 tensor but its record says 'float32'")
    rejects(with_const(q, "b", [1.0, 2.0, 3.0]), "constant 'b' is a list, not a tensor")


def test_g4_topological_order():
    g = int_graph()
    rejects(dataclasses.replace(g, nodes=[g.nodes[1], g.nodes[0], g.nodes[2]]),
            r"node 'fc' \(linear\) reads 'xq', but a later node writes it \(nodes out of topological order\)")
    rejects(with_node(g, "dequant", inputs=("nothing",)), r"node 'dequant' \(dequantize\) reads 'nothing', but nothing defines it")


def test_g5_defined_once():
    g = int_graph()
    rejects(with_node(g, "dequant", outputs=("acc",)), r"node 'dequant' \(dequantize\) writes 'acc', which is already defined")
    rejects(with_node(g, "quant", outputs=("x",)), r"node 'quant' \(quantize\) writes 'x', which is already defined")
    rejects(with_node(g, "dequant", outputs=("z",)), "writes 'z', which has no record")
    rejects(dataclasses.replace(g, values={**g.values, "ghost": Value("ghost", (1,), "float32")}),
            "value 'ghost' has a record but is neither a graph input, a constant nor a node output")


def test_g6_outputs():
    g = int_graph()
    rejects(dataclasses.replace(g, outputs=["nowhere"]), "graph output 'nowhere' is never written")
    rejects(dataclasses.replace(g, outputs=[("y",)]), "graph output .* is a tuple")
    check_graph(dataclasses.replace(g, outputs=["y", None, 3, 1.5]))     # literal outputs are fine


def test_g7_dtype_names_per_level():
    rejects(with_value(quant_graph(), "xq", dtype="qint8"),
            "value 'xq': dtype 'qint8' is not valid at level 'quant' .*quantized dtypes belong in QParams")
    rejects(with_value(quant_graph(), "y", dtype="float8"), "value 'y': dtype 'float8' is not valid at level 'quant'")
    rejects(with_value(int_graph(), "y", dtype="int7"), "value 'y': dtype 'int7' is not valid at level 'int'")
    check_graph(with_value(quant_graph(), "y", dtype="float32"))


@pytest.mark.parametrize("change, pattern", [
    (dict(dtype="qint9"), "dtype 'qint9' is not a quantized dtype"),
    (dict(scale=(0.0,)), r"scale\[0\] = 0.0; scales are finite floats > 0"),
    (dict(scale=(-0.5,)), r"scale\[0\] = -0.5"),
    (dict(scale=(math.inf,)), r"scale\[0\] = inf"),
    (dict(scale=(math.nan,)), r"scale\[0\] = nan"),
    (dict(scale=(1,)), r"scale\[0\] = 1; scales are finite floats"),
    (dict(zero_point=(128,)), r"zero_point\[0\] = 128 is outside qint8's range \[-128, 127\]"),
    (dict(zero_point=(0.0,)), r"zero_point\[0\] = 0.0"),
    (dict(zero_point=(0, 0)), "has 1 scales and 2 zero points"),
    (dict(scale=(0.1, 0.2), zero_point=(0, 0)), r"is per tensor \(ch_axis None\) but has 2 scales"),
    (dict(scale=(0.1, 0.2), zero_point=(0, 0), ch_axis=2), "ch_axis 2 is not an axis of shape"),
    (dict(scale=(0.1, 0.2), zero_point=(0, 0), ch_axis=1), "has 2 scales along axis 1, which has 4 channels"),
    (dict(scale=[0.05], zero_point=[0]), "scale and zero_point must be tuples"),
])
def test_g8_qparams(change, pattern):
    rejects(with_qparams(int_graph(), "xq", **change), "value 'xq': QParams " + pattern)


def test_g8_qparams_per_channel():
    g = int_graph()
    check_graph(with_qparams(g, "xq", scale=(0.1, 0.2, 0.3, 0.4), zero_point=(0,) * 4, ch_axis=-1))
    # a dynamic dim has no fixed channel count: any length is consistent
    check_graph(with_qparams(g, "xq", scale=(0.1, 0.2), zero_point=(0, 0), ch_axis=0))
    rejects(with_qparams(g, "w", scale=(0.1, 0.2)), r"value 'w': QParams has 2 scales and 3 zero points")
    g8 = with_value(with_const(g, "w", torch.zeros(3, 4, dtype=torch.uint8)), "w", dtype="quint8",
                    qparams=QParams("quint8", (0.1, 0.2, 0.3), (0, 255, -1), 0))
    rejects(g8, r"value 'w': QParams zero_point\[2\] = -1 is outside quint8's range \[0, 255\]")


@pytest.mark.parametrize("attrs, pattern", [
    ({"stride": (1, 1)}, r"attrs\['stride'\] = \(1, 1\) is a tuple, not JSON data; use a list"),
    ({"m0": [np.int64(3)]}, r"attrs\['m0'\]\[0\] = np.int64\(3\) is a int64, not JSON data; convert it with int\(\)"),
    ({"w": torch.ones(2)}, r"attrs\['w'\] = .* is a Tensor, not JSON data"),
    ({"eps": float("nan")}, r"attrs\['eps'\] = nan is not finite; write it as \{\"\$float\": \"nan\"\}"),
    ({"args": [{"$in": 0}, -math.inf]}, r"attrs\['args'\]\[1\] = -inf is not finite"),
    ({"table": {1: 2}}, r"attrs\['table'\] has the key 1 \(int\); JSON keys are str"),
    ({"f": print}, r"attrs\['f'\] = <built-in function print> is a builtin_function_or_method, not JSON data"),
])
def test_g9_attrs_are_json(attrs, pattern):
    rejects(with_node(int_graph(), "fc", attrs=dict(LINEAR, **attrs)), r"node 'fc' \(linear\): " + pattern)


def test_g9_node_fields():
    rejects(with_node(int_graph(), "fc", inputs=["xq", "w", "b"]), r"node 'fc' \(linear\): inputs must be a tuple")
    rejects(with_node(int_graph(), "fc", outputs=("acc", None)), r"node 'fc' \(linear\): outputs must be a tuple")
    check_graph(with_node(int_graph(), "fc", inputs=("xq", "w", None),
                          attrs=dict(LINEAR, eps={"$float": "-inf"}, names=["a"], ok=True, n=None)))


def test_q1_quantized_values_are_float_at_quant_level():
    rejects(with_value(quant_graph(), "xq", dtype="int64"),
            r"value 'xq': quantized \(qint8\) but stored as 'int64'; at level 'quant' a quantized value is a float tensor")


def test_i1_quantized_dtype_matches_qparams():
    g = int_graph()
    rejects(with_value(g, "xq", dtype="qint16"), "value 'xq': quantized as qint8 but its dtype is 'qint16'")
    rejects(with_value(g, "xq", dtype="float32"), "value 'xq': quantized as qint8 but its dtype is 'float32'")
    rejects(with_value(g, "xq", qparams=None), "value 'xq': dtype 'qint8' is quantized but the value has no QParams")


def test_i2_no_float_constant_into_an_integer_op():
    g = with_value(with_const(int_graph(), "b", torch.zeros(3)), "b", dtype="float32", qparams=None)
    rejects(g, r"node 'fc' \(linear\) reads float constant 'b' at level 'int'")
    check_graph(with_node(g, "fc", attrs=dict(LINEAR, float=True)))     # a float op may
    check_graph(quant_graph())                                           # and at level "quant" all do


# -- real graphs pass -------------------------------------------------------------------------------------
def test_export_and_convert_outputs_pass(cnn):
    _, ir, _ = cnn
    check_graph(ir)
    for g in moves_graphs():
        if isinstance(g, Graph):
            check_graph(g)
    _, _, cm = decint.run()
    check_graph(eq.export(cm))   # sym values, index outputs, a segment_lut node


# -- visualize --------------------------------------------------------------------------------------------
def props(proto) -> dict:
    return {p.key: p.value for p in proto.metadata_props}


def tensor_infos(m: onnx.ModelProto) -> dict:
    g = m.graph
    return {vi.name: vi for vi in list(g.input) + list(g.output) + list(g.value_info)}


def assert_picture(g: Graph, m: onnx.ModelProto) -> None:
    onnx.checker.check_model(m, full_check=True)
    assert max(o.version for o in m.opset_import if o.domain == "") >= 21
    assert [(n.name, n.op_type, n.domain) for n in m.graph.node] == [(n.name, n.op, "edgequant") for n in g.nodes]
    assert [list(n.input) for n in m.graph.node] == [[i or "" for i in n.inputs] for n in g.nodes]
    assert [list(n.output) for n in m.graph.node] == [list(n.outputs) for n in g.nodes]
    infos = tensor_infos(m)
    inits = {t.name: t for t in m.graph.initializer}
    assert set(infos) | set(inits) == set(g.values)
    for name, v in g.values.items():
        p = props(infos[name] if name in infos else inits[name])
        assert p["edgequant.dtype"] == v.dtype
        if v.qparams is not None:
            assert json.loads(p["edgequant.scale"]) == list(v.qparams.scale)
            assert json.loads(p["edgequant.zero_point"]) == list(v.qparams.zero_point)


def test_visualize_cnn_quant_level(cnn, tmp_path):
    cm, ir, _ = cnn
    path = tmp_path / "cnn.onnx"
    eq.visualize(ir, path)
    m = onnx.load(path)
    assert_picture(ir, m)
    assert len(m.graph.node) == len(ir.nodes) == 17
    relu = tensor_infos(m)["hardtanh"]                   # the stem's fused Conv+BN+ReLU6 output
    assert relu.type.tensor_type.elem_type == TensorProto.FLOAT
    assert json.loads(props(relu)["edgequant.scale"]) == [ir.values["hardtanh"].qparams.scale[0]]
    assert f"quint8 scale={ir.values['hardtanh'].qparams.scale[0]:.6g}" in relu.doc_string   # a ReLU6 output: unsigned
    w = {t.name: t for t in m.graph.initializer}["stem.0.weight"]
    assert w.data_type == TensorProto.FLOAT and props(w)["edgequant.ch_axis"] == "0"
    assert np.array_equal(onnx.numpy_helper.to_array(w), ir.constants["stem.0.weight"].numpy())
    # a prepared model is exported first: the same picture
    m2 = eq.visualize(cm, tmp_path / "cnn2.onnx")
    assert [n.name for n in m2.graph.node] == [n.name for n in m.graph.node]


def test_visualize_cnn_int_level(cnn, tmp_path):
    _, ir, _ = cnn
    try:
        qm = eq.convert(ir, "nash-m")
    except ConvertError as exc:
        pytest.skip(f"convert does not lower the CNN yet: {exc}")
    m = eq.visualize(qm, tmp_path / "cnn_int.onnx")
    assert_picture(qm, onnx.load(tmp_path / "cnn_int.onnx"))
    inits = {t.name: t for t in m.graph.initializer}
    int8 = [k for k, v in qm.values.items() if k in qm.constants and v.dtype == "qint8"]
    assert int8 and all(inits[k].data_type == TensorProto.INT8 for k in int8)


@pytest.mark.parametrize("setter, elem", [(None, TensorProto.INT8), (T16, TensorProto.INT16)], ids=["int8", "int16"])
def test_visualize_int_level_types_and_scales(setter, elem, tmp_path):
    ir, qm, _ = moves_graphs(setter) if setter else moves_graphs()
    path = tmp_path / "moves.onnx"
    eq.visualize(qm, path)
    m = onnx.load(path)
    assert_picture(qm, m)
    infos = tensor_infos(m)
    assert infos["x"].type.tensor_type.elem_type == TensorProto.FLOAT
    q = infos["eq_fq_quant"]
    assert q.type.tensor_type.elem_type == elem
    assert [d.dim_param or d.dim_value for d in q.type.tensor_type.shape.dim] == list(qm.values["eq_fq_quant"].shape)
    assert float(json.loads(props(q)["edgequant.scale"])[0]) == qm.values["eq_fq_quant"].qparams.scale[0]
    rescale = next(n for n in m.graph.node if n.op_type == "rescale")
    attrs = {a.name: a for a in rescale.attribute}
    assert list(attrs["m0"].ints) == next(n for n in qm.nodes if n.op == "rescale").attrs["m0"]
    assert {p.key: p.value for p in m.metadata_props}["edgequant.level"] == "int"


def test_visualize_hand_built_int_graph_with_qint4_and_qint32(tmp_path):
    g = int_graph()
    m = eq.visualize(g, tmp_path / "g.onnx")
    assert_picture(g, m)
    inits = {t.name: t for t in m.graph.initializer}
    assert inits["w"].data_type == TensorProto.INT4 and inits["b"].data_type == TensorProto.INT32
    assert onnx.numpy_helper.to_array(inits["w"]).tolist() == g.constants["w"].tolist()
    acc = tensor_infos(m)["acc"]
    assert acc.type.tensor_type.elem_type == TensorProto.INT32
    assert "per channel along axis 1: 3 scales" in acc.doc_string


def test_visualize_draws_what_save_refuses(tmp_path):
    _, _, cm = decint.run()
    ir = eq.export(cm)
    m = eq.visualize(ir, tmp_path / "decint.onnx")
    assert_picture(ir, m)
    assert any(n.op_type == "segment_lut" for n in m.graph.node)
    out, _, cm2, x = smallmodel.run(True)
    ir2 = eq.export(cm2, x)
    m2 = eq.visualize(ir2, tmp_path / "small.onnx")
    assert [o.name for o in m2.graph.output] == ir2.outputs
