"""export: the quant-level IR reproduces the VALIDATION simulation bit for bit.

The reference is the prepared model itself (its VALIDATION forward); the IR runner executes the
recorded aten calls and fake-quantizes with the exported qparams.
"""
import pytest
import torch

import edgequant as eq
from edgequant.analysis import compare
from edgequant.export import ExportError, export
from edgequant.qconfig_template import calibration_8bit_weight_16bit_act_qconfig_setter as T16, \
    default_calibration_qconfig_setter as T8

from models import calibrate, trained_cnn
from seeds import decint, smallmodel
from test_op_coverage import CASES, _inputs


def _calibrated(model, example, batches, setter=T8):
    return calibrate(eq.prepare(model, example, qconfig_setter=(setter,)), batches)


@pytest.mark.parametrize("setter", [T8, T16], ids=["int8", "int16"])
def test_cnn_quant_ir_equals_validation(setter):
    model, (xtr, _, xte, _) = trained_cnn()
    cm = _calibrated(model, xtr[:2], xtr[:256].split(64), setter)
    ir = export(cm, xtr[:2])
    assert ir.level == "quant"
    with torch.no_grad():
        for n in (1, 7, 100):  # any batch size
            assert torch.equal(ir(xte[:n]), cm(xte[:n]))


@pytest.mark.parametrize("both", [False, True])
def test_seed002_quant_ir_equals_validation(both):
    _, calib_out, cm, x = smallmodel.run(both)
    ir = export(cm, x)
    got = ir(x)
    want = calib_out if isinstance(calib_out, tuple) else (calib_out,)
    got = got if isinstance(got, tuple) else (got,)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    hp = [n.name for n in ir.nodes if n.attrs.get("high_precision")]
    assert hp == (["linear2", "linear3"] if both else ["linear3"])


def test_seed000_quant_ir_equals_validation():
    _, _, cm = decint.run()
    ir = export(cm)
    x = torch.randint(0, 4096, (3, 1, 4, 4)).float()
    assert torch.equal(ir(x), cm(x))


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_op_quant_ir_equals_validation(name):
    _, model, factory = CASES[name]
    torch.manual_seed(0)
    x = _inputs(factory)
    cm = _calibrated(model.eval(), x, [x, _inputs(factory)], T16)
    ir = export(cm, x)
    with torch.no_grad():
        assert torch.equal(ir(*x), cm(*x))


def test_export_names_a_tensor_never_calibrated():
    model, (xtr, *_) = trained_cnn()
    cm = eq.prepare(model, xtr[:2], qconfig_setter=(T8,))
    with pytest.raises(ExportError, match="never calibrated"):
        export(cm, xtr[:2])


def test_export_rejects_an_unprepared_model():
    model, (xtr, *_) = trained_cnn()
    with pytest.raises(ExportError, match="prepare"):
        export(model, xtr[:2])


def test_compare_reports_every_quantized_layer_against_float():
    model, (xtr, _, xte, _) = trained_cnn()
    cm = _calibrated(model, xtr[:2], xtr[:256].split(64), T16)
    ir = export(cm, xtr[:2])
    # the quant-level graph as the "integer" stage: sim and int agree exactly, float differs
    report = compare(model, cm, ir, xte[:64])
    assert len(report.outputs) == 1 and report.outputs[0]["cos_float_sim"] > 0.999
    assert report.outputs[0]["sqnr_sim_int"] == float("inf")
