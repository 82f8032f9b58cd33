"""A hand-made ONNX model with the exported HAPNet signature, for testing the runner fast.

``scores = W @ [r, g, b, thermal] + bias`` per pixel (a 1x1 convolution of the four input
channels, uint8 RGB cast to float), ``labels = argmax(scores)`` as uint8: the same inputs,
outputs and metadata keys as a real export, computable by hand.
"""
import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# 3 classes; weights chosen so that every class wins somewhere on ordinary images
WEIGHT = np.array([[0.02, -0.01, 0.0, 0.0], [-0.01, 0.02, 0.0, 0.0], [0.0, 0.0, -0.005, 0.015]], dtype=np.float32)
BIAS = np.array([0.0, 0.1, -0.3], dtype=np.float32)
CLASS_NAMES = ["red", "green", "warm"]
CLASS_COLORS = [[255, 0, 0], [0, 255, 0], [255, 255, 0]]


def toy_scores(rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
    """The toy model by hand: ``rgb`` HxWx3 uint8, ``thermal`` HxW float -> scores [3, H, W]."""
    x = np.concatenate([rgb.astype(np.float32), thermal[..., None].astype(np.float32)], axis=2)
    return np.einsum("kc,hwc->khw", WEIGHT, x) + BIAS[:, None, None]


def write_toy_model(path: str, size, thermal_scaling=None, metadata: bool = True) -> str:
    """Write the toy model for inputs of ``size`` (H, W); ``metadata=False`` leaves the HAPNet
    metadata out."""
    h, w = size
    nodes = [
        helper.make_node("Cast", ["rgb"], ["rgb_f"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["rgb_f", "thermal"], ["x"], axis=1),
        helper.make_node("Conv", ["x", "weight", "bias"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["labels64"], axis=1, keepdims=0),
        helper.make_node("Cast", ["labels64"], ["labels"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("rgb", TensorProto.UINT8, [1, 3, h, w]),
         helper.make_tensor_value_info("thermal", TensorProto.FLOAT, [1, 1, h, w])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3, h, w]),
         helper.make_tensor_value_info("labels", TensorProto.UINT8, [1, h, w])],
        [numpy_helper.from_array(WEIGHT[:, :, None, None], "weight"), numpy_helper.from_array(BIAS, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        props = {
            "hapnet.version": "1",
            "hapnet.task": "semantic",
            "hapnet.class_names": json.dumps(CLASS_NAMES),
            "hapnet.class_colors": json.dumps(CLASS_COLORS),
            "hapnet.input_size": json.dumps([h, w]),
            "hapnet.base_size": json.dumps([h, w]),
            "hapnet.thermal_channels": "1",
            "hapnet.thermal_scaling": json.dumps(thermal_scaling or {"mode": "full", "range": [0.0, 65535.0],
                                                                      "percentiles": [1.0, 99.0]}),
        }
        for key, value in props.items():
            prop = model.metadata_props.add()
            prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
