"""The GEMM-int8 templates: conv/linear/matmul inputs int8, every other activation int16.

Read from the prepared model's fake-quants: every tensor whose readers (looking through reshapes,
permutes and other grid-keeping ops) are all GEMMs is 8-bit, every other activation is int16, and
where a tensor feeds a GEMM and something else (the CNN's stem output feeds a conv and the skip
add; BERT's layer-norm outputs feed the projections and the residual add) the GEMMs read their own
int8 quantize point. The integer model agrees with the simulation layer by layer as for the other
templates (tests/test_convert.py), on a small CNN and a small random BertModel; all-MiniLM-L6-v2's
integer model is compared with float on the benchmark's held-out sentences.

Run alone: ``HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -s tests/test_gemm_int8.py``
"""
import pytest
import torch
import torch.nn.functional as F

import edgequant as eq
from edgequant.analysis import compare
from edgequant.gemm_inputs import GEMM_OPS
from edgequant.observers import MovingAverageMinMaxObserver
from edgequant.qconfig_template import gemm_int8_calibration_qconfig_setter as G8, \
    gemm_int8_qat_qconfig_setter as G8_QAT

import models
from models import calibrate, trained_cnn

EIGHT_BIT = (eq.qint8, eq.quint8)


def _readers(node, depth=0):
    """Op names computing from ``node``: through shared-grid ops, not counting bias corrections."""
    out = set()
    for u in node.users:
        spec = u.meta.get("eq_spec")
        if u.op == "call_module" and str(u.target).startswith("eq_bc."):
            continue   # BiasCorrection records the conv/linear input; it is no reader of its own
        if spec is not None and spec.rule == "shared" and u.args and u.args[0] is node and depth < 32:
            out |= _readers(u, depth + 1)
        else:
            out.add(spec.name if spec is not None else ("output" if u.op == "output" else str(u.target)))
    return out


def activation_fake_quants(cm):
    """``(name, FakeQuantize, reader op names)`` for every activation fake-quant of ``cm``."""
    rows = []
    for node in cm.graph.nodes:
        if node.op != "call_module" or not str(node.target).startswith("eq_fq."):
            continue
        fq = cm.get_submodule(str(node.target))
        if fq.is_weight or ".input" in node.meta["eq_fq"]:
            continue   # weights, and float constants quantized where an op reads them
        rows.append((node.meta["eq_fq"], fq, _readers(node)))
    return rows


def check_gemm_int8_dtypes(cm):
    """Every GEMM input 8-bit, everything else int16; returns the number of 8-bit tensors."""
    rows = activation_fake_quants(cm)
    assert rows
    n8 = 0
    for name, fq, readers in rows:
        if readers and readers <= GEMM_OPS:
            assert fq.dtype in EIGHT_BIT, (name, readers, fq.dtype)
            n8 += 1
        else:
            assert fq.dtype == eq.qint16, (name, readers, fq.dtype)
    # and each GEMM's activation operands lie on an 8-bit grid
    for node in cm.graph.nodes:
        spec = node.meta.get("eq_spec")
        if spec is None or spec.name not in GEMM_OPS or node.meta.get("eq_domain") != "quant":
            continue
        skip = {node.args[p] for p in (spec.weight_arg, spec.bias_arg) if p is not None and p < len(node.args)}
        for a in node.all_input_nodes:
            if a in skip:
                continue
            while a.meta.get("eq_fq") is None:   # back through shared-grid ops to the fake-quant
                assert a.meta.get("eq_spec") is not None and a.meta["eq_spec"].rule == "shared", (node, a)
                a = a.args[0]
            fq = cm.get_submodule(str(a.target))
            assert fq.dtype in EIGHT_BIT or fq.is_weight, (node.meta["eq_name"], a.meta["eq_fq"], fq.dtype)
    return n8


def check_integer_matches_simulation(model, cm, qm, x, int16_share=0.1):
    """As tests/test_convert.py: rare 1-LSB differences (a rounding tie taken the other way), never a
    systematic error. An 8-bit tensor differs by a few of its LSB at most; an int16 tensor computed
    from an 8-bit one (a GEMM output) sees one input LSB as ``sum |w| * s_in / s_out`` of its own
    much finer LSBs (measured: 18 on 0.06 % of the CNN's last conv output), so there the bound is
    the share of elements and the agreement in dB."""
    report = compare(model, cm, qm, x)
    assert report.layers
    for row in report.layers:
        if row["dtype"] == "qint32" or row["cos_float_sim"] != row["cos_float_sim"]:
            continue   # an accumulator (compared at the output), or masked attention scores (-inf in float)
        if row["dtype"] in ("qint8", "quint8"):
            assert row["max_lsb_sim_int"] <= 4.01, row
        assert row["share_differ"] <= (0.02 if row["dtype"] in ("qint8", "quint8") else int16_share), row
        assert row["sqnr_sim_int"] >= 60, row
    assert report.outputs[0]["cos_sim_int"] > 0.9999
    return report


# -- the residual CNN ---------------------------------------------------------------------------------
def test_cnn_gemm_inputs_int8_rest_int16_and_integer_matches_simulation():
    model, (xtr, _, xte, _) = trained_cnn()
    cm = eq.prepare(model, xtr[:2], qconfig_setter=(G8,))
    assert check_gemm_int8_dtypes(cm) >= 5   # input, stem copy, dw, add (-> down.0), down.0, avg_pool
    # the stem output feeds the depthwise conv and the residual add: int16, the conv reads an 8-bit copy
    assert cm.eq_fq["stem__0"].dtype == eq.qint16
    copy = cm.eq_fq["stem__2__gemm_input"]
    assert copy.dtype == eq.qint8 and not copy.observer.symmetric   # signed int8 GEMM inputs are affine
    assert cm.eq_fq["down__3"].dtype == eq.qint16   # read by the average pool only
    calibrate(cm, xtr[:256].split(64))
    qm = eq.convert(eq.export(cm, xtr[:2]), eq.March.NASH_M)
    rows = {r["name"]: r for r in qm.summary()}
    assert rows["stem.2.gemm_input"]["op"] == "rescale" and rows["stem.2.gemm_input"]["dtype"] == "qint8"
    check_integer_matches_simulation(model, cm, qm, xte[:128])


def test_cnn_qat_twin_same_dtypes_moving_average_observers_and_trains():
    model, (xtr, ytr, _, _) = trained_cnn()
    import copy

    model = copy.deepcopy(model).train()
    qat = eq.prepare(model, xtr[:2], qconfig_setter=(G8_QAT,))
    assert G8_QAT.qat and not G8.qat
    check_gemm_int8_dtypes(qat)
    assert all(isinstance(fq.observer, MovingAverageMinMaxObserver) for _, fq, _ in activation_fake_quants(qat))
    eq.set_fake_quantize(qat, eq.FakeQuantState.QAT)
    qat.train()
    opt = torch.optim.SGD(qat.parameters(), lr=1e-3)
    loss = F.cross_entropy(qat(xtr[:64]), ytr[:64])
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


# -- a small random BertModel ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_bert():
    bert = models.small_bert()
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(4):
        ids = torch.randint(1, 120, (4, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 9:] = 0
        batches.append((ids, mask))
    return bert, batches


def test_small_bert_gemm_inputs_int8_rest_int16_and_integer_matches_simulation(small_bert):
    bert, batches = small_bert
    with torch.no_grad():
        cm = eq.prepare(bert, batches[0], qconfig_setter=(G8,))
    check_gemm_int8_dtypes(cm)
    names = cm.meta["edgequant"]["sites"]
    # each layer norm output feeding the next projections and a residual add has its GEMMs' copy
    copies = [n for n in names if n.endswith(".gemm_input")]
    assert copies and all("LayerNorm" in n for n in copies), copies
    for n in copies:
        assert cm.eq_fq[n.replace(".", "__")].dtype == eq.qint8
        assert cm.eq_fq[n[:-len(".gemm_input")].replace(".", "__")].dtype == eq.qint16
    # the attention products read int8 Q, K, V and softmax; the scores feeding softmax are int16
    fq = {k: m.dtype for k, m in cm.eq_fq.items()}
    for part in ("query", "key", "value", "softmax", "matmul_1"):
        assert fq[f"encoder__layer__0__attention__self__{part}"] == eq.qint8, part
    assert fq["encoder__layer__0__attention__self__matmul"] == eq.qint16
    assert fq["encoder__layer__0__intermediate__dense"] == eq.qint16   # read by GELU
    assert fq["encoder__layer__0__intermediate__intermediate_act_fn"] == eq.qint8   # read by a linear
    calibrate(cm, batches)
    qm = eq.convert(eq.export(cm, batches[0]), eq.March.NASH_M)
    check_integer_matches_simulation(bert, cm, qm, batches[1])


# -- all-MiniLM-L6-v2 ---------------------------------------------------------------------------------
def minilm_integer_cosine(setter) -> torch.Tensor:
    """all-MiniLM-L6-v2 prepared with ``setter``, calibrated and converted for NASH_M: the cosine of
    its sentence embeddings to float's on the benchmark's 48 held-out sentences."""
    import real_data as data

    st = data.load_minilm()
    bert = st[0].auto_model.eval()
    calib, test = data.minilm_batches(st)
    with torch.no_grad():
        cm = eq.prepare(bert, calib[0], qconfig_setter=(setter,))
    calibrate(cm, calib)
    qm = eq.convert(eq.export(cm, calib[0]), eq.March.NASH_M)
    cos = F.cosine_similarity(data.embed(bert, test), data.embed(qm, test), dim=1)
    assert len(cos) == len(data.TEST_SENTENCES)
    return cos


@pytest.mark.slow
def test_minilm_gemm_int8_integer_model_tracks_float():
    """Integer model, 48 held-out sentences: mean cosine 0.99409 (torchao's Linear-only int8
    setting: 0.99386); with ``ptq.smooth_quant`` first 0.99653 (tests/test_smooth_quant.py)."""
    cos = minilm_integer_cosine(G8)
    print(f"\nMiniLM gemm-int8 integer model: mean cosine {cos.mean():.5f}, min {cos.min():.5f}")
    assert cos.mean() >= 0.993


# -- the other product forms: einsum, addmm -------------------------------------------------------------
class _Products(torch.nn.Module):
    """An einsum of two projections, an addmm with a constant (in, out) weight (GPT-2's Conv1D) and
    a residual add that reads the first projection too."""

    def __init__(self):
        super().__init__()
        self.q, self.k = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.w = torch.nn.Parameter(torch.randn(8, 8) * 0.3)
        self.b = torch.nn.Parameter(torch.randn(8) * 0.1)

    def forward(self, x):
        q, k = self.q(x), self.k(x)
        s = torch.einsum("bid,bjd->bij", q, k)
        y = torch.addmm(self.b, s.flatten(0, 1), self.w).reshape(s.shape)
        return torch.softmax(y, -1) + q.sum(-1, keepdim=True)


def test_einsum_and_addmm_read_int8_and_integer_matches_simulation():
    torch.manual_seed(0)
    model, xs = _Products().eval(), [torch.randn(4, 8, 8) for _ in range(3)]
    cm = eq.prepare(model, xs[0], qconfig_setter=(G8,))
    check_gemm_int8_dtypes(cm)
    assert cm.eq_fq["q"].dtype == eq.qint16 and cm.eq_fq["q__gemm_input"].dtype == eq.qint8   # also read by sum
    assert cm.eq_fq["k"].dtype == eq.qint8 and cm.eq_fq["einsum"].dtype == eq.qint8   # read by einsum / addmm only
    calibrate(cm, xs)
    qm = eq.convert(eq.export(cm, xs[0]), eq.March.NASH_M)
    # addmm's bias is added in float by the simulation and on the accumulator grid s_x * s_w by the
    # integer model (only conv/linear biases go through a BiasCorrection that rounds them the same way);
    # with int8 inputs and an int16 output that shows as 1-LSB differences on 17 % of addmm's outputs
    check_integer_matches_simulation(model, cm, qm, xs[1], int16_share=0.25)
