"""Files that are not what load expects, and kernel attrs that lie about their values.

``load`` of a FIFO or a device refuses without reading; a file whose header announces far more
than it describes is refused after reading its headers only (memory measured with ru_maxrss);
``save`` to a directory or a missing directory names the path; a level-"int" file whose kernel
attrs disagree with the values they read or write (output dtype and zero point, input zero
points, conv geometry, requantizing multipliers that would overflow int64, scales outside
float32) is refused by ``load`` naming the node or value. References: the file layout of
docs/ir.md section 5 and the attrs convert writes (eqm_craft.small_files).
"""
import os
import resource
import struct

import pytest
import torch
from safetensors.torch import load as st_load, save as st_save

from edgequant.serialize import HEADER_SIZE, MAGIC, IRFileError, load, loads, save

from eqm_craft import rebuild, small_files, split


def test_fifo_and_devices_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "model.eqm"
    os.mkfifo(fifo)                       # open() alone would block: load must refuse before
    with pytest.raises(IRFileError, match="not a regular file"):
        load(fifo)
    with pytest.raises(IRFileError, match="/dev/zero"):
        load("/dev/zero")


def test_a_huge_sparse_file_is_refused_from_its_headers(tmp_path):
    big = 8 << 30
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for head in (b"", struct.pack("<8sIQQ", MAGIC, 1, 100, big - HEADER_SIZE - 100) + b"\0" * 32):
        p = tmp_path / "sparse.eqm"
        with open(p, "wb") as f:
            f.write(head)
            f.truncate(big)
        with pytest.raises(IRFileError):
            load(p)
        p.unlink()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000   # KiB: nothing big was read


def test_save_names_a_directory_or_missing_parent(tmp_path):
    g = loads(small_files()["int"])
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        save(g, tmp_path)
    with pytest.raises(FileNotFoundError, match="nodir"):
        save(g, tmp_path / "nodir" / "m.eqm")
    save(g, tmp_path / "bytes ☃.eqm")
    assert torch.equal(load(tmp_path / "bytes ☃.eqm")(small_files()["x"]), g(small_files()["x"]))


def crafted(mutate) -> bytes:
    doc = split(small_files()["int"])[1]
    mutate({n["name"]: n for n in doc["nodes"]}, {v["name"]: v for v in doc["values"]})
    return rebuild(small_files()["int"], doc)


@pytest.mark.parametrize("mutate, pattern", [
    (lambda n, v: n["stem.0"]["attrs"].update(out_dtype="qint16"), "out_dtype"),
    (lambda n, v: n["stem.0"]["attrs"].update(out_zero_point=3), "zero point"),
    (lambda n, v: n["head"]["attrs"].update(x_zero_point=7), "x_zero_point"),
    (lambda n, v: n["stem.0"]["attrs"].update(dilation=[1, 1, 1]), "dilation"),
    (lambda n, v: n["stem.0"]["attrs"].update(groups=2), "groups"),
    (lambda n, v: n["stem.0"]["attrs"].update(clamp=[5, 1]), "reversed"),
    (lambda n, v: n["stem.0"]["attrs"].update(output="acc"), "accumulator"),
    (lambda n, v: n["avg_pool"]["attrs"].update(ends=[[100], [100]]), "pooling windows"),
    (lambda n, v: v["relu6"]["qparams"].update(scale=[1e-40]), "float32"),
    (lambda n, v: v["relu6"]["qparams"].update(scale=[1e39]), "float32"),
])
def test_int_kernel_attrs_must_agree_with_their_values(mutate, pattern):
    with pytest.raises(IRFileError, match=pattern):
        loads(crafted(mutate))


@pytest.mark.parametrize("name, value", [("stem.0.m0", 2 ** 62), ("stem.0.m0", -(2 ** 30)), ("stem.0.shift", -40)])
def test_requantizing_multipliers_that_overflow_int64_are_refused(name, value):
    ts = st_load(split(small_files()["int"])[2])
    ts[name] = torch.full_like(ts[name], value)
    with pytest.raises(IRFileError, match="stem.0"):
        loads(rebuild(small_files()["int"], blob=st_save(ts)))


def _add_term(key, value, k=0):
    return lambda n, v: n["add"]["attrs"]["terms"][k].update({key: value})


@pytest.mark.parametrize("mutate, pattern", [
    (lambda n, v: n["add"]["attrs"].update(shift=-5), r"attrs\['shift'\] = -5"),   # would shift left, past int64
    (lambda n, v: n["add"]["attrs"].update(shift=[30, 30, -1, 30]), r"attrs\['shift'\]"),
    (_add_term("m0", 2 ** 62), "reach 2\\^.*past int64"),                # the conv accumulator times 2^62
    (_add_term("m0", [2 ** 47] * 4, 1), "reach 2\\^.*past int64"),
    (_add_term("m0_neg", 2 ** 62), "reach 2\\^.*past int64"),
    (lambda n, v: n["add"]["attrs"].update(const=2 ** 63 - 1), "past int64"),
    (_add_term("m0", 2 ** 40), r"attrs\['bound'\] = \d+ is below"),     # float64 carrier, no longer exact
    (lambda n, v: n["add"]["attrs"].update(bound=5), r"attrs\['bound'\] = 5 is below"),
    (_add_term("zp", 7), "subtracts zero point 7, not the one of its input 'hardtanh'"),
    (_add_term("m0", [1, 2]), "different lengths"),
])
def test_affine_attrs_that_overflow_or_lie_are_refused(mutate, pattern):
    with pytest.raises(IRFileError, match="node 'add' \\(add\\): .*" + pattern):
        loads(crafted(mutate))


def test_affine_attrs_convert_writes_load_and_run_bit_identically():
    g = loads(small_files()["int"])
    add = next(n for n in g.nodes if n.op == "add")
    assert add.attrs["kernel"] == "affine" and add.attrs["bound"] < 2 ** 53
    x = small_files()["x"]
    assert torch.equal(loads(crafted(lambda n, v: None))(x), g(x))
