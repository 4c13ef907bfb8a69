"""numpy arrays <-> TensorFlow TensorProto, by hand: no tf.make_tensor_proto, so this stays a
plain protobuf affair (numeric tensors travel as `tensor_content`, strings as `string_val`).

Importing `tensorflow.core.framework` does run TensorFlow's package __init__ (as does every
`tensorflow_serving.apis` module), so the TF Serving client pays TensorFlow's import time once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from dermserve.core.errors import InternalError

_NUMERIC_DTYPES: dict[Any, int] = {
    np.dtype(np.uint8): types_pb2.DT_UINT8,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
}
_NUMPY_DTYPES = {proto: dtype for dtype, proto in _NUMERIC_DTYPES.items()}
# When a sender fills the typed repeated fields instead of tensor_content (TF Serving may).
_VALUE_FIELDS = {
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
}


def shape_proto(shape: tuple[int, ...]) -> Any:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape])


def make_tensor(array: np.ndarray) -> Any:
    """A TensorProto holding `array` (numeric dtypes above, or bytes/str for DT_STRING)."""
    if array.dtype.kind in "SUO":
        values = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.flat]
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING,
                                      tensor_shape=shape_proto(array.shape), string_val=values)
    dtype = _NUMERIC_DTYPES.get(array.dtype)
    if dtype is None:
        raise InternalError(f"no TensorProto dtype for numpy {array.dtype}")
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape_proto(array.shape),
                                  tensor_content=np.ascontiguousarray(array).tobytes())


def make_ndarray(tensor: Any) -> np.ndarray:
    """The numpy array a TensorProto holds (DT_STRING becomes an object array of bytes)."""
    shape = tuple(dim.size for dim in tensor.tensor_shape.dim)
    if tensor.dtype == types_pb2.DT_STRING:
        return np.array(list(tensor.string_val), dtype=object).reshape(shape)
    dtype = _NUMPY_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InternalError(f"unsupported TensorProto dtype {tensor.dtype}")
    if tensor.tensor_content:
        flat = np.frombuffer(tensor.tensor_content, dtype=dtype)
    else:
        flat = np.asarray(getattr(tensor, _VALUE_FIELDS[tensor.dtype]), dtype=dtype)
        size = int(np.prod(shape))
        if flat.size == 1 and size != 1:  # a single value stands for a filled tensor
            flat = np.full(size, flat[0], dtype=dtype)
    if flat.size != int(np.prod(shape)):
        raise InternalError(f"TensorProto holds {flat.size} values for shape {list(shape)}")
    return flat.reshape(shape)
