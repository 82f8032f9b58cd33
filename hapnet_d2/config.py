"""Default config keys of HAPNet-D2.

Every key HAPNet adds to Detectron2's config lives here, with its meaning. YAML files under
``configs/`` only override these defaults (``_BASE_`` chains), as in Mask2Former.
"""
import difflib
import logging
import os
import re
import sys

import torch
import yaml
from detectron2.config import CfgNode as CN


class ConfigError(ValueError):
    """A config file or override is wrong: unknown key, wrong value type, missing or invalid
    file. The message is one line naming the file (or the override) and, for an unknown key,
    the closest valid key."""


def add_hapnet_config(cfg):
    """Add HAPNet's keys (model, data, solver, test) to a Detectron2 ``cfg`` in place."""
    # CUDA where a GPU is present, else CPU
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.MODEL.META_ARCHITECTURE = "HAPNet"
    cfg.MODEL.BACKBONE.NAME = "HAPNetBackbone"

    # ---------------------------------------------------------------- input / data
    cfg.INPUT.FORMAT = "RGB"  # channel order of "image" tensors (RGB or BGR)
    # mapper registered in hapnet_d2.data.dataset_mappers
    cfg.INPUT.DATASET_MAPPER_NAME = "rgbt_semantic"
    # base scale (H, W): training resizes it by a ratio drawn from RESIZE_RATIO_RANGE; test images
    # are resized to fit it, keeping their aspect ratio (predictions go back to the original size)
    cfg.INPUT.BASE_SIZE = (480, 640)
    cfg.INPUT.RESIZE_RATIO_RANGE = (0.5, 2.0)
    # crop (square; the ViT's relative-position window is built for CROP.SIZE)
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (480, 480)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.75
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    # photometric augmentation of the RGB image only (brightness/contrast/saturation/hue)
    cfg.INPUT.COLOR_AUG_SSD = False
    # pad training batches to a multiple of this (-1: none)
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # how 16-bit thermal images (raw camera counts) become the 0-255 scale (hapnet_d2.data.io;
    # 8-bit thermal is always divided by 255, or by the dataset's thermal_max):
    # "full": divide by the dataset's thermal_max, else by 65535; "fixed": INPUT.THERMAL_RANGE
    # (min, max) counts -> 0-255, clipped; "percentile": per image, the INPUT.THERMAL_PERCENTILES
    # (low, high) percentiles -> 0-255, clipped (what a camera's automatic gain control does)
    cfg.INPUT.THERMAL_SCALING = "full"
    cfg.INPUT.THERMAL_RANGE = (0.0, 65535.0)  # "fixed": raw counts mapped to 0 and 255
    cfg.INPUT.THERMAL_PERCENTILES = (1.0, 99.0)  # "percentile": low/high percentiles, in [0, 100]

    # ---------------------------------------------------------------- normalisation
    # RGB: /255 then ImageNet mean/std, expressed on the 0-255 scale (Detectron2 convention)
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    # thermal: /255 with mean 0 and std 1 (reference configuration)
    cfg.MODEL.THERMAL_PIXEL_MEAN = [0.0, 0.0, 0.0]
    cfg.MODEL.THERMAL_PIXEL_STD = [255.0, 255.0, 255.0]

    # ---------------------------------------------------------------- HAPNet encoder
    cfg.MODEL.HAPNET = CN()
    # data input strategy of the paper's Table 5: which modalities the VFM and the CSPD see.
    # A: VFM RGB+T, CSPD RGB+T   B: RGB+T / RGB   C: RGB+T / T
    # D: RGB / RGB+T (paper)     E: RGB / RGB     F: RGB / T
    # G: T / RGB+T               H: T / RGB       I: T / T
    cfg.MODEL.HAPNET.INPUT_STRATEGY = "D"
    # vision foundation model: any timm ViT / BEiT / DeiT / DINOv2 name
    cfg.MODEL.HAPNET.VFM_NAME = "beitv2_base_patch16_224"
    cfg.MODEL.HAPNET.VFM_DROP_PATH = 0.2
    cfg.MODEL.HAPNET.VFM_LAYER_SCALE_INIT = 1e-6
    # blocks [first, last] (inclusive) of each of the 4 encoding stages
    cfg.MODEL.HAPNET.VFM_STAGES = [[0, 2], [3, 5], [6, 8], [9, 11]]
    # extra timm keyword arguments for the VFM (e.g. {"embed_dim": 192, "depth": 4})
    cfg.MODEL.HAPNET.VFM_KWARGS = CN(new_allowed=True)
    # local checkpoint (timm state dict or official BEiT/BEiTv2 .pth); "" = random init
    cfg.MODEL.HAPNET.VFM_WEIGHTS = ""
    # how VFM_WEIGHTS' relative-position tables (made for another window, e.g. 224) are resized
    # to the crop's window, both on BEiT's geometric grid: "bicubic" (the official BEiT/HAPNet
    # loader: a bicubic interpolating spline) or "linear" (timm's default)
    cfg.MODEL.HAPNET.VFM_REL_POS_RESIZE = "bicubic"
    # inference keeps each block's relative-position bias [1, heads, N, N] per input size instead of
    # gathering it every call (bit-identical; the reference model at 480x480: ~470 MB, 4 sizes at
    # most); False saves that memory for the gathers' time (docs/SPEED.md)
    cfg.MODEL.HAPNET.VFM_CACHE_REL_POS_BIAS = True
    # cross-modal spatial prior descriptor: a timm ConvNeXt
    cfg.MODEL.HAPNET.CSPD_NAME = "convnext_small"
    cfg.MODEL.HAPNET.CSPD_DROP_PATH = 0.3
    # True: one ConvNeXt shared by RGB and thermal (own final norms); False: two (Table 6)
    cfg.MODEL.HAPNET.CSPD_SHARED_WEIGHTS = True
    cfg.MODEL.HAPNET.CSPD_WEIGHTS = ""  # local checkpoint (official or timm ConvNeXt)
    # progressive heterogeneous feature integrator (Table 7 switches)
    cfg.MODEL.HAPNET.USE_GLCA = True
    cfg.MODEL.HAPNET.USE_CCG = True
    cfg.MODEL.HAPNET.DEFORM_NUM_HEADS = 12
    cfg.MODEL.HAPNET.DEFORM_NUM_POINTS = 4
    cfg.MODEL.HAPNET.DEFORM_RATIO = 0.5  # value/output projection width = dim * ratio
    cfg.MODEL.HAPNET.CFFN_RATIO = 0.25  # ConvFFN hidden width = dim * ratio
    cfg.MODEL.HAPNET.GLCA_GAMMA_INIT = 1e-6
    cfg.MODEL.HAPNET.EXTRA_EXTRACTORS = 2  # extra CCG extractors after the last stage's
    cfg.MODEL.HAPNET.PHFI_DROP_PATH = 0.2
    # BatchNorm on the 4 outputs: "auto" = SyncBN when distributed, plain BN otherwise
    cfg.MODEL.HAPNET.OUT_NORM = "auto"
    # deformable attention implementation: "auto" (compiled kernel, else PyTorch with a
    # warning), "kernel" (error if missing) or "pytorch" (grid_sample reference)
    cfg.MODEL.HAPNET.MSDA_IMPL = "auto"

    # ---------------------------------------------------------------- duplex encoders (Table 8)
    # Symmetric baselines (MODEL.BACKBONE.NAME "DuplexBackbone"): the same encoder runs on RGB
    # and on thermal and the two feature pyramids are fused per scale.
    cfg.MODEL.DUPLEX = CN()
    # timm name: a ConvNeXt (strides 4-32 from its stages) or a plain ViT such as
    # "beitv2_base_patch16_224", built like the VFM (MODEL.HAPNET.VFM_STAGES give the pyramid's
    # features, VFM_LAYER_SCALE_INIT and VFM_KWARGS apply; OUT_NORM is the 1/4 deconv path's norm)
    cfg.MODEL.DUPLEX.ENCODER = "convnext_small"
    # "sum": element-wise sum; "concat": channel concatenation + 1x1 conv back to C per scale
    cfg.MODEL.DUPLEX.FUSION = "sum"
    # True: one encoder for both modalities. The paper's default: Table 6 names its duplex
    # encoders "sharing weights" unless it says "separate weights", and it adopts weight sharing
    # for its own duplex ConvNeXt (the CSPD); Table 8's rows say nothing else.
    cfg.MODEL.DUPLEX.SHARED_WEIGHTS = True
    cfg.MODEL.DUPLEX.DROP_PATH = 0.3  # stochastic depth (reference: ConvNeXt-S 0.3, BEiTv2-B 0.2)
    # local checkpoint for each branch (ViT: as VFM_WEIGHTS; ConvNeXt: as CSPD_WEIGHTS); "" = none
    cfg.MODEL.DUPLEX.WEIGHTS = ""

    # ---------------------------------------------------------------- auxiliary head
    cfg.MODEL.HAPNET.AUX_HEAD = CN()
    cfg.MODEL.HAPNET.AUX_HEAD.ENABLED = True  # training only, never run at inference
    cfg.MODEL.HAPNET.AUX_HEAD.CHANNELS = 256
    cfg.MODEL.HAPNET.AUX_HEAD.DROPOUT = 0.1
    cfg.MODEL.HAPNET.AUX_HEAD.LOSS_WEIGHT = 0.4

    # ---------------------------------------------------------------- Mask2Former head
    cfg.MODEL.SEM_SEG_HEAD.NAME = "HAPNetMaskFormerHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 9
    cfg.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_DIM_FEEDFORWARD = 1024

    cfg.MODEL.MASK_FORMER = CN()
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 5.0
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 9  # masked-attention decoder layers
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    # point-sampled mask loss (PointRend-style importance sampling)
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75
    # outputs at inference (Mask2Former's keys and defaults), all from the same queries
    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True  # "sem_seg": [K, H, W] class scores
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False  # "instances": scored thing masks and boxes
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False  # "panoptic_seg": (segment ids [H, W], segments_info)
    # panoptic: a query is kept only if its class score exceeds this (and it is not "no object")
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.8
    # panoptic: a kept query must win at least this fraction of its own (sigmoid >= 0.5) mask
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.8
    # instances: (query, class) candidates per image, before keeping thing classes only
    cfg.MODEL.MASK_FORMER.TEST.TEST_TOPK_PER_IMAGE = 100

    # ---------------------------------------------------------------- inference
    cfg.TEST.MODE = "slide"  # "slide" (sliding window) or "whole" (one pass, padded)
    cfg.TEST.SLIDE_CROP = (480, 480)  # window (H, W); usually INPUT.CROP.SIZE
    cfg.TEST.SLIDE_STRIDE = (320, 320)
    # test-time augmentation: resize scales relative to the test size, plus flip
    cfg.TEST.AUG.ENABLED = False
    cfg.TEST.AUG.SCALES = [1.0, 1.25, 1.5]
    cfg.TEST.AUG.FLIP = True
    # write a confusion-matrix PNG and paper-style tables next to results.json
    cfg.TEST.WRITE_REPORTS = True
    # which checkpoint of a training run is tested and reported on DATASETS.TEST:
    # "val": evaluate DATASETS.VAL every TEST.EVAL_PERIOD iterations (and at the end), keep the
    #   best val mIoU as model_best.pth, then test that one (needs a val split);
    # "test": the paper's protocol (the authors' code validates on the test split every epoch and
    #   keeps the best): evaluate DATASETS.TEST periodically and report the best test mIoU;
    # "last": test the final model (evaluations every TEST.EVAL_PERIOD on DATASETS.TEST)
    cfg.TEST.MODEL_SELECTION = "last"
    # the validation split(s) for TEST.MODEL_SELECTION "val" (one dataset name)
    cfg.DATASETS.VAL = ()

    # ---------------------------------------------------------------- solver
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.LAYER_DECAY_RATE = 0.95  # layer-wise lr decay over the ViT's layers (1 = off)
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.WEIGHT_DECAY = 0.05  # AdamW (reference recipe)
    cfg.SOLVER.WARMUP_ITERS = 1500  # linear warm-up, then poly decay
    # gradient clipping: "full_model" = one norm over all gradients (reference: 5.0);
    # "value" / "norm" are Detectron2's per-parameter clippers
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 5.0
    # AMP dtype: "auto" = bfloat16 on CPU, float16 on CUDA
    cfg.SOLVER.AMP.DTYPE = "auto"
    # refuse checkpoints that need pickle code execution unless this is True
    cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS = False
    # inference (demo, --eval-only): refuse MODEL.WEIGHTS when more than this fraction of the
    # model's parameter values would stay unloaded (missing or wrong shape in the file)
    cfg.MODEL.WEIGHTS_MAX_UNLOADED_FRACTION = 0.01
    # True: load a checkpoint that fits only part of the model (e.g. a backbone-only file)
    cfg.MODEL.ALLOW_PARTIAL_WEIGHTS = False


def get_hapnet_cfg(config_file: str, opts=(), allow_unsafe_checkpoints: bool = False):
    """An unfrozen config: Detectron2's defaults -> HAPNet's -> ``config_file`` -> ``opts``.

    The one way every entry point (train_net.py, demo, tools, tests) builds its config. A
    config asking for CUDA on a machine without a GPU is switched to the CPU.

    Args:
        config_file: YAML file (with optional ``_BASE_`` chain).
        opts: overrides ``[KEY, VALUE, KEY, VALUE, ...]`` (values as strings or Python values).
        allow_unsafe_checkpoints: set ``MODEL.ALLOW_UNSAFE_CHECKPOINTS True``.

    Raises:
        ConfigError: missing or invalid file, unknown key (the message gives the closest valid
            key), value of the wrong type, odd number of overrides.
    """
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_hapnet_config(cfg)
    _merge_file(cfg, config_file)
    _merge_opts(cfg, list(opts))
    if allow_unsafe_checkpoints:
        cfg.MODEL.ALLOW_UNSAFE_CHECKPOINTS = True
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).info("MODEL.DEVICE asks for CUDA but no GPU is available: using the CPU.")
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def get_hapnet_cfg_or_exit(config_file: str, opts=(), allow_unsafe_checkpoints: bool = False):
    """:func:`get_hapnet_cfg` for command lines: a :class:`ConfigError` is printed as one line
    ``error: ...`` on stderr and the process exits with code 2 (argparse's code for bad usage)."""
    try:
        return get_hapnet_cfg(config_file, opts, allow_unsafe_checkpoints)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def config_keys(cfg) -> list:
    """Every full key of ``cfg`` (nodes and leaves), e.g. ``["MODEL", "MODEL.DEVICE", ...]``."""
    keys = []
    for name, value in cfg.items():
        keys.append(name)
        if isinstance(value, CN):
            keys += [f"{name}.{sub}" for sub in config_keys(value)]
    return keys


def closest_key(cfg, key: str):
    """The valid key of ``cfg`` closest to ``key`` (difflib), or None when none is close."""
    keys = config_keys(cfg)
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not match:  # a misspelt or missing section: compare the last components
        last = {k.rsplit(".", 1)[-1]: k for k in keys}
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(last), n=1, cutoff=0.75)
        match = [last[close[0]]] if close else []
    return match[0] if match else None


def _unknown_key_message(cfg, where: str, key: str) -> str:
    suggestion = closest_key(cfg, key)
    hint = f"; did you mean {suggestion}?" if suggestion else ""
    return f"{where}: {key} is not a config key{hint}"


_TYPE_MISMATCH = re.compile(
    r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values \((.*) vs\. (.*)\) "
    r"for config key: (\S+)", re.DOTALL
)


def _type_message(where: str, error: ValueError) -> str:
    match = _TYPE_MISMATCH.search(str(error))
    if match is None:
        return f"{where}: {_one_line(error)}"
    expected, given, current, value, key = match.groups()
    article = "an" if expected[0] in "aeiou" else "a"
    return (f"{where}: {key} expects {article} {expected} like {current}, got {value} ({given})"
            + ("; write it with a decimal point, e.g. 1.0" if (expected, given) == ("float", "int") else ""))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _merge_file(cfg, config_file: str) -> None:
    """``cfg.merge_from_file`` with every failure as a one-line :class:`ConfigError`."""
    if not config_file:
        raise ConfigError("no config file given (--config-file FILE)")
    if not os.path.isfile(config_file):
        raise ConfigError(f"{config_file}: config file does not exist")
    try:
        cfg.merge_from_file(config_file)
    except KeyError as e:
        match = re.search(r"Non-existent config key: (\S+)", str(e.args[0]) if e.args else "")
        if match is None:
            raise ConfigError(f"{config_file}: {_one_line(e)}") from None
        raise ConfigError(_unknown_key_message(cfg, config_file, match.group(1))) from None
    except ValueError as e:
        raise ConfigError(_type_message(config_file, e)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{config_file}:{mark.line + 1}" if mark is not None else config_file
        reason = getattr(e, "problem", None) or _one_line(e)
        raise ConfigError(f"{where}: invalid YAML ({reason})") from None
    except (OSError, AssertionError, TypeError, AttributeError) as e:  # missing _BASE_, bad layout
        raise ConfigError(f"{config_file}: {_one_line(e)}") from None


def _merge_opts(cfg, opts: list) -> None:
    """``cfg.merge_from_list``, one pair at a time, with every failure as a :class:`ConfigError`."""
    if len(opts) % 2:
        raise ConfigError(f"config overrides must be KEY VALUE pairs; {opts[-1]!r} has no value")
    for key, value in zip(opts[0::2], opts[1::2]):
        where = f"config override {key} {value}"
        if not isinstance(key, str):
            raise ConfigError(f"{where}: a config key must be a string like SOLVER.MAX_ITER")
        try:
            cfg.merge_from_list([key, value])
        except AssertionError as e:
            if "Non-existent key" not in str(e):
                raise ConfigError(f"{where}: {_one_line(e)}") from None
            raise ConfigError(_unknown_key_message(cfg, "config override", key)) from None
        except ValueError as e:
            raise ConfigError(_type_message("config override", e)) from None
        except KeyError as e:  # a renamed key
            raise ConfigError(f"{where}: {_one_line(e)}") from None
