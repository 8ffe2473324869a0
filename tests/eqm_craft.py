"""Crafting .eqm files as an attacker would: take a valid file apart, change it, put it back
together with a correct SHA-256 (so the checksum does not save the reader).

The layout is docs/ir.md section 5: a 28-byte head (magic, format version, JSON length, tensor
length), the SHA-256 of head + JSON + tensors, the JSON document, the safetensors bytes.
"""
import functools
import hashlib
import json
import struct

import torch

import edgequant as eq
from edgequant.qconfig_template import default_calibration_qconfig_setter as T8
from edgequant.serialize import HEADER_SIZE, dumps

from models import ResidualCNN

HEAD = struct.Struct("<8sIQQ")


def split(data: bytes) -> tuple[bytes, dict, bytes]:
    """``(magic + version, JSON document, safetensors bytes)`` of a file."""
    magic, version, jl, bl = HEAD.unpack_from(data, 0)
    body = data[HEADER_SIZE:HEADER_SIZE + jl]
    return struct.pack("<8sI", magic, version), json.loads(body), data[HEADER_SIZE + jl:HEADER_SIZE + jl + bl]


def join(prefix: bytes, body: bytes, blob: bytes) -> bytes:
    """A file of ``body`` (JSON bytes) and ``blob`` whose header lengths and SHA-256 are right."""
    head = prefix + struct.pack("<QQ", len(body), len(blob))
    return head + hashlib.sha256(head + body + blob).digest() + body + blob


def rebuild(data: bytes, doc=None, blob: bytes | None = None) -> bytes:
    """``data`` with its document and/or tensor bytes replaced, checksum recomputed."""
    prefix, old_doc, old_blob = split(data)
    body = json.dumps(old_doc if doc is None else doc).encode() if not isinstance(doc, bytes) else doc
    return join(prefix, body, old_blob if blob is None else blob)


def fix_checksum(data: bytes) -> bytes:
    """``data`` (possibly mutated anywhere after the magic) with its SHA-256 made to match again."""
    if len(data) < HEADER_SIZE:
        return data
    head = data[:HEAD.size]
    rest = data[HEADER_SIZE:]
    return head + hashlib.sha256(head + rest).digest() + rest


def st_split(blob: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def st_join(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + data


@functools.lru_cache(maxsize=1)
def small_files() -> dict:
    """``{"quant": bytes, "int": bytes, "x": example input}``: a small residual CNN (conv, batch
    norm, depthwise conv, add, relu6, max/avg pooling, linear) on 8x8 images, exported, converted
    and saved."""
    torch.manual_seed(0)
    model = ResidualCNN(c=4).eval()
    x = torch.randn(2, 1, 8, 8)
    pm = eq.prepare(model, x, qconfig_setter=(T8,))
    eq.calibrate(pm, [x, torch.randn(4, 1, 8, 8)])
    ir = eq.export(pm, x)
    return {"quant": dumps(ir), "int": dumps(eq.convert(ir, "nash-m")), "x": x}
