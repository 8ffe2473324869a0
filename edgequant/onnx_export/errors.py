"""The one error type of ``onnx_export``.

Takes nothing; ``OnnxExportError`` is raised with a message that names the IR node (its name,
op and source line) that could not be written and says what to do about it.
"""
from __future__ import annotations

from ..ir import Node


class OnnxExportError(ValueError):
    """An IR node has no ONNX translation in the requested flavour (the message names it)."""


def unsupported(node: Node, flavour: str, why: str = "") -> OnnxExportError:
    """The error for ``node``: its name, op, aten target and source line, and what to do."""
    target = node.attrs.get("target", "")
    detail = f": {why}" if why else ""
    return OnnxExportError(
        f"cannot export node {node.name!r} (op {node.op!r}{', ' + target if target else ''}) to the {flavour} ONNX "
        f"flavour{detail}\n  from {node.source or '<unknown source>'}\n  export the model without this op "
        "(wrap it outside the quantized region) or use the other flavour; "
        "docs/onnx.md lists the ops each flavour writes")


def translate_nodes(b, nodes, flavour: str, step) -> None:
    """Run ``step(node)`` for each IR node with the builder's doc string and name prefix set to
    it; any ``ValueError`` becomes an ``OnnxExportError`` naming the node."""
    for node in nodes:
        b.source, b.prefix = node.source, node.name
        try:
            step(node)
        except OnnxExportError:
            raise
        except ValueError as exc:
            raise unsupported(node, flavour, str(exc)) from None
    b.source, b.prefix = "", ""
