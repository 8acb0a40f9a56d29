"""What an .onnx file refers to outside itself, read without the onnx package: the external-data files of
its tensors. A bundle may only name files inside its own folder (``Bundle.load`` checks these too).

ONNX files are protobuf messages; this walks the wire format down the few fields that can hold a tensor
(graph initializers, sparse initializers, node attributes, subgraphs, functions) and collects each tensor's
``external_data`` ``location``. Field numbers are onnx.proto3's.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# message -> {field number: the message type it holds}
_MODEL = {7: "graph", 25: "function"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_FUNCTION = {7: "node"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_TENSOR_EXTERNAL, _ENTRY_KEY, _ENTRY_VALUE = 13, 1, 2
SCHEMA = {"model": _MODEL, "graph": _GRAPH, "function": _FUNCTION, "node": _NODE, "attribute": _ATTRIBUTE,
          "sparse": _SPARSE}


class NotOnnx(ValueError):
    """The bytes are not a well-formed protobuf message (a truncated or corrupt .onnx file)."""


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise NotOnnx("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, memoryview | None]]:
    """(field number, payload) for every field; payload is the bytes of length-delimited fields, else None."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(data, i)
            yield number, None
        elif wire == 1:
            i += 8
            yield number, None
        elif wire == 2:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise NotOnnx("a field runs past the end of the file")
            yield number, data[i:i + size]
            i += size
        elif wire == 5:
            i += 4
            yield number, None
        else:  # groups (3, 4) are not used by ONNX; anything else is not protobuf
            raise NotOnnx(f"unknown wire type {wire}")
    if i != len(data):
        raise NotOnnx("a fixed-size field runs past the end of the file")


def _locations(data: memoryview, kind: str, depth: int = 0) -> Iterator[str]:
    if depth > 64:  # subgraphs nest; a file that nests deeper than this is not a model
        raise NotOnnx("graphs nested too deeply")
    for number, payload in _fields(data):
        if payload is None:
            continue
        if kind == "tensor":
            if number == _TENSOR_EXTERNAL:
                entry = dict((n, bytes(p).decode("utf-8", "replace")) for n, p in _fields(payload) if p is not None)
                if entry.get(_ENTRY_KEY) == "location":
                    yield entry.get(_ENTRY_VALUE, "")
            continue
        inner = SCHEMA[kind].get(number)
        if inner is not None:
            yield from _locations(payload, inner, depth + 1)


def external_files(path: str | os.PathLike) -> list[str]:
    """The external-data locations an .onnx file names (relative paths, as written), in order, once each.

    Raises NotOnnx for bytes that are not a protobuf message (e.g. a file cut short while copying)."""
    with open(path, "rb") as f:
        data = memoryview(f.read())
    if not data:
        raise NotOnnx("the file is empty")
    return list(dict.fromkeys(_locations(data, "model")))


def inside(root: str | os.PathLike, name: str) -> Path:
    """``root / name`` if it stays inside ``root`` (no absolute path, no '..', no symlink leading out);
    else ValueError naming the file."""
    root_real = Path(os.path.realpath(root))
    if not name or os.path.isabs(name) or Path(name).drive or ".." in Path(name.replace("\\", "/")).parts:
        raise ValueError(f"bundle {root} names the file {name!r}, which is not inside the bundle folder; a bundle "
                         "may only name files in its own folder (re-export it, or copy the file in)")
    target = Path(os.path.realpath(root_real / name))
    if target != root_real and root_real not in target.parents:
        raise ValueError(f"bundle {root} names {name!r}, which leads to {target}, outside the bundle folder "
                         "(a symlink?); a bundle may only name files in its own folder")
    return root_real / name
