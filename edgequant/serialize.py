"""Save and load: a ``Graph`` (either level) <-> one file, without pickle.

Takes a graph that ``export`` or ``convert`` returned (``save``) or a path (``load``); ``load``
returns a graph that runs bit-identically to the one saved and passes ``check_graph``. The file
(layout in ``docs/ir.md``) is a fixed 60-byte header (magic, format version, the two payload
lengths, a SHA-256), a JSON document with everything but the tensors (level, inputs, outputs,
values with their ``QParams``, nodes with their attrs, ``meta`` without the in-memory keys that
start with ``"_"``) and the constants as safetensors bytes. Nothing is executed or unpickled
on load: a file can only describe data. Every name it holds (op, call target, dtype, memory
format, device) must be on the allow-lists of ``ops.names`` and every kernel attribute must
have the type its kernel reads (``check_graph(g, from_file=True)``, rules G10, F1, F2); sizes
are bounded by the bytes in the file (the safetensors header is checked against its data
before any tensor is read), so a file cannot make ``load`` or a run allocate what it only claims;
``load`` refuses what is not a regular file (a FIFO, ``/dev/zero``) and reads a file's headers
before the bytes they announce, so a huge or sparse file is refused without being read.

Every way a file can be wrong (empty, truncated, a flipped byte anywhere, another format, a
newer format version, trailing bytes, a malformed or crafted document) raises ``IRFileError`` (a ``ValueError``) naming the file
and what is wrong; a path that does not exist raises ``FileNotFoundError``.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as _st_load, save as _st_save
from torch.utils import _pytree as pytree

from .argcheck import expect_path
from .check import IRCheckError, check_graph, json_problem
from .ir import IR_VERSION, Graph, Node, QParams, Value
from .ops import calls_python

MAGIC = b"\x89EQIR\r\n\x1a"          # 8 bytes; the \r\n and \x1a catch text-mode transfers
FORMAT_VERSION = 1
_HEAD = struct.Struct("<8sIQQ")      # magic, format version, JSON length, tensor length
_HASH_LEN = 32                       # SHA-256 over the 28 bytes above + JSON + tensors
HEADER_SIZE = _HEAD.size + _HASH_LEN  # 60
MAX_JSON = 1 << 30                   # a longer document is refused before it is read


class SerializeError(ValueError):
    """A graph cannot be written faithfully; the message names the node, value or meta key."""


class IRFileError(SerializeError):
    """A file is not a readable edgequant graph; the message names the file and the problem."""


class _Malformed(Exception):
    """A document that passed the checksum but does not describe a graph (a writer's bug)."""


# -- save ----------------------------------------------------------------------------------------
def dumps(g: Graph) -> bytes:
    """The bytes ``save`` writes for ``g`` (see ``save``)."""
    if not isinstance(g, Graph):
        raise TypeError(f"save takes an edgequant Graph (what export or convert returns), got {type(g).__name__}; "
                        "a prepared model is saved by exporting it first (edgequant.export(model, example))")
    _refuse_callables(g)
    check_graph(g)
    meta = _saved_meta(g)
    doc = {
        "format": "edgequant.graph",
        "ir_version": IR_VERSION,
        "level": g.level,
        "inputs": list(g.inputs),
        "outputs": list(g.outputs),
        "values": [_value_doc(v) for v in g.values.values()],
        "nodes": [{"name": n.name, "op": n.op, "inputs": list(n.inputs), "outputs": list(n.outputs),
                   "attrs": n.attrs, "source": n.source} for n in g.nodes],
        "constants": list(g.constants),
        "meta": meta,
    }
    try:
        text = json.dumps(doc, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:   # e.g. a NaN literal among the graph outputs
        raise SerializeError(f"the graph cannot be written as JSON: {exc}") from None
    blob = _tensor_bytes(g.constants)
    body = text.encode("utf-8")
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, len(body), len(blob))
    digest = hashlib.sha256(head + body + blob).digest()
    return head + digest + body + blob


def save(g: Graph, path: str | os.PathLike) -> None:
    """Write ``g`` (a ``Graph`` at level ``"quant"`` or ``"int"``) to ``path`` as one file.

    Only graphs are saved: not prepared models nor their state (export a prepared model first,
    or keep its ``state_dict`` with safetensors). The file is written to a temporary name and
    renamed, so an interrupted save never leaves a half-written file at ``path``.

    Raises ``SerializeError`` for a graph that a file cannot hold faithfully (a node that runs a
    Python callable: ``float_call``, or ``segment_lut`` without tables; table ops, with
    ``attrs["lut"]``, are saved with their tables; ``meta`` that is not JSON; an output
    structure that cannot be recorded), ``IRCheckError`` for a graph that breaks its level's
    rules, ``TypeError`` for anything that is not a ``Graph``.
    """
    expect_path(path, "save", "path")
    data = dumps(g)
    path = Path(os.fsdecode(os.fspath(path)))
    if path.is_dir():
        raise IsADirectoryError(f"save: {path} is a directory; give a file name such as {path / 'model.eqm'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"save: the directory {path.parent} of {path} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except PermissionError:
        raise PermissionError(f"save: cannot write {path}: permission denied in {path.parent}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _refuse_callables(g: Graph) -> None:
    for n in g.nodes:
        if "lut" in n.attrs:  # a table op: its tables are constants, its callable only serves float runs
            continue
        if calls_python(n.op) or "callable_ref" in n.attrs:
            raise SerializeError(
                f"node {n.name!r} ({n.op}) from {n.source or '<unknown>'} runs Python code "
                f"({n.attrs.get('callable_ref') or n.attrs.get('module') or 'a callable'}), which a file cannot hold "
                "faithfully (only table ops, with attrs['lut'], store their function, as table constants); "
                "keep this graph in memory")


def _saved_meta(g: Graph) -> dict:
    meta = {k: v for k, v in g.meta.items() if not (isinstance(k, str) and k.startswith("_"))}
    problem = json_problem(meta, "meta")
    if problem:
        raise SerializeError(f"cannot save the graph's meta: {problem}")
    spec = g.meta.get("_pytree_out_spec")
    if spec is not None or meta.get("out_spec") is not None:
        text = meta.get("out_spec")
        try:
            restored = pytree.treespec_loads(text) if text is not None else None
        except Exception:
            restored = None
        if restored is None or (spec is not None and restored != spec):
            raise SerializeError(f"the model's output structure ({spec}) cannot be recorded in meta['out_spec']; "
                                 "return tensors, tuples, lists or dicts so a loaded graph returns the same structure")
    return meta


def _value_doc(v: Value) -> dict:
    qp = v.qparams
    return {"name": v.name, "shape": list(v.shape), "dtype": v.dtype,
            "qparams": None if qp is None else {"dtype": qp.dtype, "scale": list(qp.scale),
                                                "zero_point": list(qp.zero_point), "ch_axis": qp.ch_axis}}


def _tensor_bytes(constants: dict[str, torch.Tensor]) -> bytes:
    if "__metadata__" in constants:
        raise SerializeError("a constant named '__metadata__' cannot be stored (the name is reserved by safetensors)")
    seen: set[int] = set()
    flat = {}
    for name, t in constants.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()                  # safetensors refuses tensors that share or view storage
        seen.add(t.untyped_storage().data_ptr())
        flat[name] = t
    return _st_save(flat)


# -- load ----------------------------------------------------------------------------------------
def load(path: str | os.PathLike) -> Graph:
    """Read a graph written by ``save``; it runs bit-identically to the graph that was saved.

    Raises ``IRFileError`` (a ``ValueError``) naming the file for an empty, truncated, corrupted
    or foreign file, or one written by a newer format version; ``FileNotFoundError`` if ``path``
    does not exist. The graph is checked with ``check_graph`` before it is returned.
    """
    name = os.fspath(expect_path(path, "load", "path"))
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if os.path.isdir(name):
        raise IRFileError(f"{name}: is a directory, not an edgequant graph file")
    try:
        mode = os.stat(name).st_mode
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not os.path.islink(name):
            raise
        raise IRFileError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise IRFileError(f"{name}: not a regular file (a device, FIFO or socket), not an edgequant graph file")
    with open(name, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        head = _read(f, HEADER_SIZE)
        if len(head) == HEADER_SIZE and head[:len(MAGIC)] == MAGIC:
            _, _, json_len, blob_len = _HEAD.unpack_from(head, 0)
            if HEADER_SIZE + json_len + blob_len != size or json_len > MAX_JSON:   # refused by loads without reading the rest
                return loads(head + _read(f, min(size, 1 << 16)), name, size)
            body = _read(f, json_len)
            st_head = _read(f, min(blob_len, 8))
            n = int.from_bytes(st_head, "little") if len(st_head) == 8 else 0
            st_head += _read(f, min(n, blob_len - len(st_head)))
            _check_extent(st_head, blob_len, name)   # before reading what the header merely announces
            return loads(head + body + st_head + _read(f, blob_len - len(st_head)), name)
        return loads(head, name, size)


def _check_extent(st_head: bytes, blob_len: int, name: str) -> None:
    """Refuse a tensor section whose safetensors header does not account for exactly its
    ``blob_len`` bytes (a file that announces gigabytes it does not describe is not read)."""
    try:
        n = int.from_bytes(st_head[:8], "little")
        header = json.loads(st_head[8:8 + n].decode("utf-8"))
        ends = [e["data_offsets"][1] for k, e in header.items() if k != "__metadata__"]
        end = max([0] + [e for e in ends if type(e) is int])
    except Exception:  # malformed: loads names the problem after the checksum (the section is small)
        if blob_len <= 1 << 24:
            return
        raise IRFileError(f"{name}: corrupted: the tensor section's header is unreadable") from None
    if 8 + n + end != blob_len:
        raise IRFileError(f"{name}: corrupted: the tensor section holds {blob_len} bytes but its header "
                          f"describes {8 + n + end}")


def _read(f, n: int) -> bytes:
    """At most ``n`` bytes from ``f`` (fewer at the end of the file)."""
    parts, left = [], n
    while left > 0:
        chunk = f.read(min(left, 1 << 26))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def loads(data: bytes, name: str = "<bytes>", _size: int | None = None) -> Graph:
    """Read a graph from the bytes of a file (``name`` is used in error messages).

    (``_size``: ``load`` passes the file's size when ``data`` is only its first bytes, for a
    file that is refused from its header, so that a huge file is never read whole.)
    """
    def bad(what: str) -> IRFileError:
        return IRFileError(f"{name}: {what}")

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"loads takes the bytes of an edgequant graph file, got {type(data).__name__}; "
                        "to read a file by name use edgequant.load(path)")
    data = bytes(data)
    size = len(data) if _size is None else _size
    if size == 0:
        raise bad("the file is empty (not an edgequant graph file)")
    if data[:len(MAGIC)] != MAGIC[:len(data)]:
        raise bad(f"not an edgequant graph file (it starts with {bytes(data[:8])!r}{_guess(data)}, "
                  f"expected {MAGIC!r})")
    if size < HEADER_SIZE:
        raise bad(f"truncated: {size} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, json_len, blob_len = _HEAD.unpack_from(data, 0)
    if version != FORMAT_VERSION:
        newer = "newer than this edgequant reads; upgrade edgequant" if version > FORMAT_VERSION else "unknown"
        raise bad(f"format version {version} is {newer} (this edgequant reads version {FORMAT_VERSION})")
    expected = HEADER_SIZE + json_len + blob_len
    if json_len > MAX_JSON:
        raise bad(f"corrupted: the header announces a {json_len}-byte document (at most {MAX_JSON} are read)")
    if size < expected:
        raise bad(f"truncated or corrupted: {size} bytes, the header announces {expected}")
    if size > expected:
        raise bad(f"corrupted: {size - expected} unexpected bytes after the {expected} the header announces")
    if len(data) != size:
        raise bad(f"could not read all {size} bytes")
    stored = data[_HEAD.size:HEADER_SIZE]
    body = data[HEADER_SIZE:HEADER_SIZE + json_len]
    blob = data[HEADER_SIZE + json_len:]
    if hashlib.sha256(data[:_HEAD.size] + body + blob).digest() != stored:
        raise bad("corrupted: the SHA-256 of the contents does not match the one recorded in the header")
    try:
        doc = json.loads(body.decode("utf-8"))
        g = _graph_from(doc, _tensors_from(bytes(blob)))
    except Exception as exc:   # a valid checksum but a malformed document (RecursionError, MemoryError too)
        raise bad(f"malformed contents ({type(exc).__name__}: {str(exc)[:300]})") from None
    try:
        check_graph(g, from_file=True)
    except IRCheckError as exc:
        raise bad(f"the stored graph breaks an IR rule: {exc}") from None
    except Exception as exc:   # a rule that met data of a type no writer produces
        raise bad(f"the stored graph breaks an IR rule ({type(exc).__name__}: {str(exc)[:300]})") from None
    return g


def _guess(data: bytes) -> str:
    if data[:4] == b"PK\x03\x04":
        return ", a zip archive such as a torch.save file"
    if data[:1] == b"\x08":
        return ", perhaps an ONNX/protobuf file"
    if data[:2] == b"\x80\x02" or data[:1] == b"\x80":
        return ", a pickle"
    return ""


def _field(d: dict, key: str, kind, where: str):
    """``d[key]``, which must be a ``kind`` (a type or a tuple of types)."""
    if not isinstance(d, dict) or key not in d:
        raise _Malformed(f"{where} has no {key!r}")
    v = d[key]
    if not isinstance(v, kind) or isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise _Malformed(f"{where}[{key!r}] is a {type(v).__name__}, expected {names}")
    return v


def _names(items, where: str, none_ok: bool = False) -> tuple:
    if not all(isinstance(i, str) or none_ok and i is None for i in items):
        raise _Malformed(f"{where} must list value names (str{' or null' if none_ok else ''})")
    return tuple(items)


def _graph_from(doc: dict, tensors: dict[str, torch.Tensor]) -> Graph:
    if not isinstance(doc, dict) or doc.get("format") != "edgequant.graph":
        raise _Malformed("the document is not an edgequant graph")
    if type(doc.get("ir_version")) is not int or doc["ir_version"] > IR_VERSION:
        raise _Malformed(f"IR version {doc.get('ir_version')!r:.40} is newer than this edgequant reads ({IR_VERSION})")
    values = {}
    for k, v in enumerate(_field(doc, "values", list, "the document")):
        where = f"values[{k}]" + (f" ({v['name']!r:.80})" if isinstance(v, dict) and isinstance(v.get("name"), str) else "")
        qp = _field(v, "qparams", (dict, type(None)), where)
        if qp is not None:
            w = f"{where}['qparams']"
            ch = _field(qp, "ch_axis", (int, type(None)), w)
            qp = QParams(_field(qp, "dtype", str, w), tuple(_field(qp, "scale", list, w)),
                         tuple(_field(qp, "zero_point", list, w)), ch)
        name = _field(v, "name", str, where)
        if name in values:
            raise _Malformed(f"value {name!r} is recorded twice")
        values[name] = Value(name, tuple(_field(v, "shape", list, where)), _field(v, "dtype", str, where), qp)
    nodes = []
    for k, n in enumerate(_field(doc, "nodes", list, "the document")):
        where = f"nodes[{k}]" + (f" ({n['name']!r:.80})" if isinstance(n, dict) and isinstance(n.get("name"), str) else "")
        nodes.append(Node(_field(n, "name", str, where), _field(n, "op", str, where),
                          _names(_field(n, "inputs", list, where), f"{where}['inputs']", none_ok=True),
                          _names(_field(n, "outputs", list, where), f"{where}['outputs']"),
                          _field(n, "attrs", dict, where), _field(n, "source", str, where)))
    names = _names(_field(doc, "constants", list, "the document"), "constants")
    if sorted(names) != sorted(tensors) or len(set(names)) != len(names):
        raise _Malformed(f"the document lists constants {sorted(names)[:8]} but the tensors are {sorted(tensors)[:8]}")
    constants = {k: tensors[k] for k in names}
    meta = dict(_field(doc, "meta", dict, "the document"))
    spec = meta.get("out_spec")
    if spec is not None:
        try:
            if not isinstance(spec, str):
                raise TypeError(f"a {type(spec).__name__}")
            leaves = pytree.treespec_loads(spec).num_leaves   # JSON naming registered container types only
        except Exception as exc:
            raise _Malformed(f"meta['out_spec'] is not an output structure this torch reads ({exc})") from None
        if leaves != len(_field(doc, "outputs", list, "the document")):
            raise _Malformed(f"meta['out_spec'] holds {leaves} outputs but the graph lists {len(doc['outputs'])}")
    return Graph(_field(doc, "level", str, "the document"), list(_names(_field(doc, "inputs", list, "the document"),
                 "inputs")), list(_field(doc, "outputs", list, "the document")), values, nodes, constants, meta)


_ST_DTYPES = {"F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
              "BF16": (torch.bfloat16, 2), "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2),
              "I8": (torch.int8, 1), "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1)}


def _tensors_from(blob: bytes) -> dict[str, torch.Tensor]:
    """The safetensors bytes as tensors, after checking that every tensor its header declares
    lies inside the bytes (so a header cannot make us allocate what it merely claims)."""
    if len(blob) < 8:
        raise _Malformed(f"the tensor section has {len(blob)} bytes, too few for a safetensors header")
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8:
        raise _Malformed(f"the safetensors header claims {n} bytes; the section holds {len(blob) - 8}")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    if not isinstance(header, dict):
        raise _Malformed("the safetensors header is not a JSON object")
    data_len = len(blob) - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"tensor {name!r:.60}"
        dtype = _field(entry, "dtype", str, where)
        shape = _field(entry, "shape", list, where)
        offsets = _field(entry, "data_offsets", list, where)
        if dtype not in _ST_DTYPES:
            raise _Malformed(f"{where} has dtype {dtype!r:.20}; expected one of {sorted(_ST_DTYPES)}")
        if not all(type(d) is int and d >= 0 for d in shape):
            raise _Malformed(f"{where} has shape {shape!r:.80}; dims are ints >= 0")
        if len(offsets) != 2 or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1] <= data_len:
            raise _Malformed(f"{where} has data_offsets {offsets!r:.80} outside the {data_len} data bytes")
        numel = 1
        for d in shape:
            numel *= d
        if numel * _ST_DTYPES[dtype][1] != offsets[1] - offsets[0]:
            raise _Malformed(f"{where}: shape {shape} of {dtype} needs {numel * _ST_DTYPES[dtype][1]} bytes, "
                             f"its data_offsets span {offsets[1] - offsets[0]}")
    return _st_load(blob)


__all__ = ["save", "load", "dumps", "loads", "SerializeError", "IRFileError", "MAGIC", "FORMAT_VERSION",
           "HEADER_SIZE"]
