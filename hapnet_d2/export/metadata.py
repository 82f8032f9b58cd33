"""Export metadata: what a deployed model needs to know besides its weights.

Stored as string key/value pairs, in the ONNX file's ``metadata_props`` and as the extra file
``hapnet_metadata.json`` of a TorchScript archive. Values that are not plain strings are JSON:

====================== ==================================================================
``hapnet.version``     format version of these keys ("1")
``hapnet.task``        "semantic"
``hapnet.class_names`` JSON list of the K class names
``hapnet.class_colors``JSON list of K ``[r, g, b]`` colours
``hapnet.input_size``  JSON ``[H, W]``: the graph's fixed input size
``hapnet.base_size``   JSON ``[h, w]``: ``INPUT.BASE_SIZE``, the scale the model was evaluated at
``hapnet.thermal_channels`` "1" (thermal) or "3" (X modality such as HHA)
``hapnet.thermal_scaling``  JSON ``{"mode", "range", "percentiles"}``: ``INPUT.THERMAL_*``
``hapnet.inputs``      JSON description of the two inputs
``hapnet.outputs``     JSON description of the two outputs
``hapnet.config_sha256``    SHA-256 of the full config dump (``cfg.dump()``)
``hapnet.weights``     file name of ``MODEL.WEIGHTS`` ("" for random weights)
====================== ==================================================================
"""
import hashlib
import json
import os
from typing import Dict, List, Sequence, Tuple

__all__ = ["METADATA_VERSION", "export_metadata", "config_sha256", "class_names_and_colors",
           "write_onnx_metadata", "read_onnx_metadata", "TORCHSCRIPT_METADATA_FILE"]

METADATA_VERSION = "1"
TORCHSCRIPT_METADATA_FILE = "hapnet_metadata.json"


def config_sha256(cfg) -> str:
    """SHA-256 (hex) of the config's YAML dump: equal configs give equal hashes."""
    return hashlib.sha256(cfg.dump().encode("utf-8")).hexdigest()


def _palette_color(i: int) -> List[int]:
    """A deterministic distinct colour for class ``i`` (when the dataset has none)."""
    return [(37 * i + 80) % 256, (91 * i + 160) % 256, (151 * i + 40) % 256]


def class_names_and_colors(cfg, dataset_name: str = None) -> Tuple[List[str], List[List[int]]]:
    """Class names and colours of ``dataset_name`` (default ``DATASETS.TEST[0]``).

    Datasets without ``stuff_classes``/``stuff_colors`` (or no dataset) give ``class_<i>`` and
    generated colours.

    Returns:
        K names and K ``[r, g, b]`` colours, K = ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``.
    Raises:
        ValueError: the dataset's class list does not have K entries.
    """
    from detectron2.data import MetadataCatalog

    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    name = dataset_name or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    meta = MetadataCatalog.get(name) if name else None
    names = list(meta.get("stuff_classes", [])) if meta is not None else []
    colors = [list(map(int, c)) for c in meta.get("stuff_colors", [])] if meta is not None else []
    if not names:
        names = [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"dataset {name!r} has {len(names)} classes but the model predicts {num_classes} "
                         f"(MODEL.SEM_SEG_HEAD.NUM_CLASSES)")
    if len(colors) != num_classes:
        colors = [_palette_color(i) for i in range(num_classes)]
    return names, colors


def export_metadata(
    cfg,
    size: Tuple[int, int],
    thermal_channels: int,
    class_names: Sequence[str],
    class_colors: Sequence[Sequence[int]],
) -> Dict[str, str]:
    """The metadata of one export (keys in the module doc).

    Args:
        cfg: the model's config.
        size: (H, W) of the exported graph.
        thermal_channels: 1 or 3.
        class_names, class_colors: K names and K ``[r, g, b]``.
    Returns:
        dict of str -> str.
    """
    h, w = size
    inputs = {
        "rgb": f"uint8 [1, 3, {h}, {w}], RGB order, 0-255",
        "thermal": f"float32 [1, {thermal_channels}, {h}, {w}], 0-255 after the thermal scaling",
    }
    outputs = {
        "scores": f"float32 [1, {len(class_names)}, {h}, {w}], per-class scores",
        "labels": f"uint8 [1, {h}, {w}], argmax of the scores",
    }
    scaling = {
        "mode": cfg.INPUT.THERMAL_SCALING,
        "range": [float(v) for v in cfg.INPUT.THERMAL_RANGE],
        "percentiles": [float(v) for v in cfg.INPUT.THERMAL_PERCENTILES],
    }
    return {
        "hapnet.version": METADATA_VERSION,
        "hapnet.task": "semantic",
        "hapnet.class_names": json.dumps(list(class_names)),
        "hapnet.class_colors": json.dumps([list(map(int, c)) for c in class_colors]),
        "hapnet.input_size": json.dumps([int(h), int(w)]),
        "hapnet.base_size": json.dumps([int(v) for v in cfg.INPUT.BASE_SIZE]),
        "hapnet.thermal_channels": str(int(thermal_channels)),
        "hapnet.thermal_scaling": json.dumps(scaling),
        "hapnet.inputs": json.dumps(inputs),
        "hapnet.outputs": json.dumps(outputs),
        "hapnet.config_sha256": config_sha256(cfg),
        "hapnet.weights": os.path.basename(cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS else "",
    }


def write_onnx_metadata(path: str, metadata: Dict[str, str]) -> None:
    """Store ``metadata`` in the ``metadata_props`` of the ONNX file ``path`` (rewritten in place)."""
    import onnx

    model = onnx.load(path)
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, str(value)
    onnx.save(model, path)


def read_onnx_metadata(path: str) -> Dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (weights are not loaded)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
