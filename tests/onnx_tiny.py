"""Write tiny ONNX models whose outputs are constants, without the ``onnx`` package.

The tests need ONNX files with the real input/output names and shapes so that the full
onnxruntime path runs. ``onnx`` is not a project dependency (and ``torch.onnx.export`` needs it),
so this encodes the few protobuf messages by hand, following the field numbers of
``onnx/onnx.proto`` (ModelProto, GraphProto, NodeProto, TensorProto, ValueInfoProto, TypeProto).
Each output is ``Identity(initializer)``; the declared input shape makes onnxruntime check the
shape it is fed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, payload: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _str(field: int, text: str) -> bytes:
    return _bytes(field, text.encode())


FLOAT = 1  # TensorProto.DataType.FLOAT


def _tensor(name: str, array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype="<f4")
    dims = b"".join(_int(1, d) for d in array.shape)
    return dims + _int(2, FLOAT) + _str(8, name) + _bytes(9, array.tobytes())


def _value_info(name: str, shape: Sequence[int]) -> bytes:
    dims = b"".join(_bytes(1, _int(1, d)) for d in shape)
    tensor_type = _int(1, FLOAT) + _bytes(2, dims)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def _node(op: str, inputs: Sequence[str], outputs: Sequence[str], name: str) -> bytes:
    return (b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
            + _str(3, name) + _str(4, op))


def constant_model(input_name: str, input_shape: Sequence[int], outputs: dict[str, np.ndarray]) -> bytes:
    """Serialized ModelProto (IR 8, opset 13): one float input of ``input_shape``, and one float
    output per ``outputs`` entry (in that order) equal to the given array."""
    graph = b""
    for i, (name, value) in enumerate(outputs.items()):
        graph += _bytes(1, _node("Identity", [f"const_{i}"], [name], f"identity_{i}"))
    graph += _str(2, "tiny")
    for i, value in enumerate(outputs.values()):
        graph += _bytes(5, _tensor(f"const_{i}", value))
    graph += _bytes(11, _value_info(input_name, input_shape))
    for name, value in outputs.items():
        graph += _bytes(12, _value_info(name, np.shape(value)))
    opset = _str(1, "") + _int(2, 13)
    return _int(1, 8) + _str(2, "avatar-cli-tests") + _bytes(7, graph) + _bytes(8, opset)


def linear_model(input_name: str, input_shape: Sequence[int], output_name: str, weight: np.ndarray,
                 node_names: Sequence[str] = ("flatten", "matmul")) -> bytes:
    """Serialized ModelProto (IR 8, opset 13): ``output = Flatten(input) @ weight``, one float
    input of ``input_shape`` (leading batch 1) and one output (1, weight.shape[1]); ``node_names``
    names the two nodes (a name starting "Sub"/"Mul" is what InsightFace's ArcFace loader looks for)."""
    graph = _bytes(1, _node("Flatten", [input_name], ["flat"], node_names[0]))
    graph += _bytes(1, _node("MatMul", ["flat", "weight"], [output_name], node_names[1]))
    graph += _str(2, "tiny_linear")
    graph += _bytes(5, _tensor("weight", weight))
    graph += _bytes(11, _value_info(input_name, input_shape))
    graph += _bytes(12, _value_info(output_name, (input_shape[0], weight.shape[1])))
    opset = _str(1, "") + _int(2, 13)
    return _int(1, 8) + _str(2, "avatar-cli-tests") + _bytes(7, graph) + _bytes(8, opset)


def write(path, input_name: str, input_shape: Sequence[int], outputs: dict[str, np.ndarray]) -> None:
    """Write :func:`constant_model` to ``path``."""
    with open(path, "wb") as fh:
        fh.write(constant_model(input_name, input_shape, outputs))


__all__ = ["constant_model", "linear_model", "write"]
