"""Load published VFM and ConvNeXt checkpoints from local files into the HAPNet encoder.

Accepted layouts:
- VFM: timm state dicts; the official BEiT / BEiTv2 ``.pth`` (weights under ``"model"``, per-block
  or shared ``rel_pos_bias`` tables made for 224x224, ``cls_token`` and no ``pos_embed``); DeiT /
  DINOv2 checkpoints in timm's or their authors' layout. Relative-position tables are resized to
  the model's window on BEiT's geometric grid, bicubically as the official BEiT/HAPNet loader
  (:func:`resize_rel_pos_table`) or linearly as timm; position and patch embeddings are resized
  by timm's own ``checkpoint_filter_fn``.
- CSPD: official ConvNeXt (``downsample_layers``/``stages.i.j``) and timm ConvNeXt, loaded into the
  shared network (and the thermal one when weights are separate).

Files are read with ``weights_only=True`` (see :func:`hapnet_d2.checkpoint.safe_torch_load`).
Missing and unexpected keys are logged and returned.
"""
import importlib
import logging
from typing import Dict, List, NamedTuple, Tuple

import numpy as np
import torch
from torch import nn

from hapnet_d2.checkpoint import safe_torch_load

logger = logging.getLogger(__name__)

__all__ = [
    "load_vfm_weights",
    "load_cspd_weights",
    "LoadReport",
    "REL_POS_RESIZE_MODES",
    "geometric_rel_pos_grid",
    "resize_rel_pos_table",
]

REL_POS_RESIZE_MODES = ("bicubic", "linear")

# classifier / pre-training parts that HAPNet drops on purpose
_IGNORED_PREFIXES = ("head.", "fc_norm.", "norm.", "lm_head.", "mask_token", "norm_pre.", "head_drop.")


class LoadReport(NamedTuple):
    missing: List[str]
    unexpected: List[str]
    ignored: List[str]


def _unwrap(checkpoint, path: str) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint (``model`` / ``state_dict`` / ``module`` wrappers and a
    common ``backbone.`` / ``module.`` key prefix removed)."""
    state = checkpoint
    for key in ("model", "state_dict", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors (keys: {list(state)[:5]}...)")
    for prefix in ("module.", "backbone.", "encoder."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _load(module: nn.Module, state: Dict[str, torch.Tensor], path: str, what: str) -> LoadReport:
    ignored = [k for k in state if k.startswith(_IGNORED_PREFIXES) or "relative_position_index" in k]
    state = {k: v for k, v in state.items() if k not in set(ignored)}
    own = module.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        details = ", ".join(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched[:5])
        raise ValueError(f"{path}: {what} weights do not fit the configured model ({details})")
    result = module.load_state_dict(state, strict=False)
    report = LoadReport(list(result.missing_keys), list(result.unexpected_keys), ignored)
    logger.info(
        f"Loaded {what} weights from {path}: {len(state) - len(report.unexpected)} tensors; "
        f"missing {len(report.missing)} {report.missing[:10]}; unexpected {len(report.unexpected)} "
        f"{report.unexpected[:10]}; ignored {len(ignored)} classifier/pre-training keys"
    )
    return report


def geometric_rel_pos_grid(src: int, dst: int) -> np.ndarray:
    """Positions of a ``src``-long relative-distance axis stretched over a ``dst``-long one.

    BEiT's rule: the distances 0, +-1, ... of the source keep 0 and +-1 and are spread with
    geometrically growing steps ``1, q, q^2, ...`` so that the outermost lands near ``dst // 2``
    (``q`` found by bisection in [1.01, 1.5] to 1e-6, as in the BEiT and timm loaders).

    Args:
        src: source axis length (2 * window - 1, odd). dst: destination axis length.
    Returns:
        ``[src]`` float64 increasing positions, symmetric around 0.
    """
    half = src // 2
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q**half) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(half):
        dis.append(cur)
        cur += q ** (i + 1)
    return np.array([-d for d in reversed(dis)] + [0.0] + dis, dtype=np.float64)


def resize_rel_pos_table(
    table: torch.Tensor, src_window: Tuple[int, int], dst_window: Tuple[int, int], mode: str = "bicubic"
) -> torch.Tensor:
    """Resize a BEiT relative-position bias table to another attention window.

    The ``(2*Wh-1) x (2*Ww-1)`` relative distances of the source sit on BEiT's geometric grid
    (:func:`geometric_rel_pos_grid`) and are sampled at the integer distances of the destination.
    ``"bicubic"`` reproduces the official loader, SciPy's removed ``interp2d(kind="cubic")``: on a
    rectangular grid that fitted FITPACK's interpolating bicubic spline (``regrid``, s=0), which
    ``RectBivariateSpline(kx=3, ky=3, s=0)`` computes with the same routine. ``"linear"`` is
    timm's path (bilinear on the same grid, ``timm.layers.resize_rel_pos_bias_table``). The extra rows (BEiT's 3 cls-token entries) after
    the distance grid are kept unchanged.

    Args:
        table: ``[(2*Wh-1)*(2*Ww-1) + E, heads]``.
        src_window / dst_window: (Wh, Ww) attention windows (token grids) of source and model.
        mode: ``"bicubic"`` or ``"linear"``.
    Returns:
        ``[(2*Dh-1)*(2*Dw-1) + E, heads]`` in the dtype of ``table``.
    """
    if mode not in REL_POS_RESIZE_MODES:
        raise ValueError(f"MODEL.HAPNET.VFM_REL_POS_RESIZE={mode!r} is not one of {REL_POS_RESIZE_MODES}")
    src = (2 * src_window[0] - 1, 2 * src_window[1] - 1)
    dst = (2 * dst_window[0] - 1, 2 * dst_window[1] - 1)
    if src == dst:
        return table
    num_grid = src[0] * src[1]
    extra = table[num_grid:]
    values = table[:num_grid].detach().double().cpu().numpy().reshape(src[0], src[1], -1)
    ys, xs = geometric_rel_pos_grid(src[0], dst[0]), geometric_rel_pos_grid(src[1], dst[1])
    ty, tx = dst[0] // 2, dst[1] // 2
    dy, dx = np.arange(-ty, ty + 1, dtype=np.float64), np.arange(-tx, tx + 1, dtype=np.float64)
    # distances beyond the stretched grid (its end lands within 1e-4 of dst // 2) take the
    # boundary value, as FITPACK's evaluation and timm's interpolator both do
    dy, dx = np.clip(dy, ys[0], ys[-1]), np.clip(dx, xs[0], xs[-1])
    heads = []
    for h in range(values.shape[-1]):
        z = values[..., h]  # [src_h (y), src_w (x)]
        if mode == "bicubic":
            from scipy.interpolate import RectBivariateSpline

            heads.append(RectBivariateSpline(ys, xs, z, kx=3, ky=3, s=0)(dy, dx))
        else:
            from scipy.interpolate import RegularGridInterpolator

            grid = np.stack(np.meshgrid(dy, dx, indexing="ij"), axis=-1)
            heads.append(RegularGridInterpolator((ys, xs), z, method="linear")(grid))
    resized = torch.from_numpy(np.stack(heads, axis=-1).reshape(dst[0] * dst[1], -1))
    return torch.cat([resized.to(table.dtype), extra.to(table.dtype).cpu()], dim=0).to(table.device)


def _source_window(num_rows: int, num_extra: int, path: str, key: str) -> Tuple[int, int]:
    """The square window a checkpoint's flat relative-position table was made for."""
    side = int(round((num_rows - num_extra) ** 0.5))
    if side * side != num_rows - num_extra or side % 2 == 0:
        raise ValueError(
            f"{path}: {key} has {num_rows} rows, not (2W-1)^2 + {num_extra} for a square window W"
        )
    return (side + 1) // 2, (side + 1) // 2


def _resize_rel_pos_tables(model: nn.Module, state: Dict[str, torch.Tensor], path: str, mode: str) -> None:
    """Resize (in ``state``) every relative-position table that does not fit ``model``'s window."""
    for key in [k for k in state if k.endswith("relative_position_bias_table")]:
        name = key[: -len(".relative_position_bias_table")]
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue  # unexpected key, reported by the load
        own = getattr(module, "relative_position_bias_table", None)
        table = state[key]
        if own is None or table.dim() != 2 or table.shape == own.shape:
            continue
        dst_window = tuple(module.window_size)
        num_extra = own.shape[0] - (2 * dst_window[0] - 1) * (2 * dst_window[1] - 1)
        src_window = _source_window(table.shape[0], num_extra, path, key)
        state[key] = resize_rel_pos_table(table, src_window, dst_window, mode)


def load_vfm_weights(vfm, path: str, allow_unsafe: bool = False, rel_pos_resize: str = "bicubic") -> LoadReport:
    """Load a ViT/BEiT checkpoint into a :class:`~hapnet_d2.modeling.backbone.timm_vit.TimmViT`.

    Args:
        vfm: the VFM wrapper (its ``.vfm`` is the timm model).
        path: local checkpoint file.
        allow_unsafe: allow files that need pickle code execution.
        rel_pos_resize: relative-position table resize, ``"bicubic"`` (official) or ``"linear"``
            (timm); see :func:`resize_rel_pos_table`.
    Returns:
        the missing / unexpected / deliberately ignored keys.
    """
    if rel_pos_resize not in REL_POS_RESIZE_MODES:
        raise ValueError(
            f"MODEL.HAPNET.VFM_REL_POS_RESIZE={rel_pos_resize!r} is not one of {REL_POS_RESIZE_MODES}"
        )
    state = _unwrap(safe_torch_load(path, allow_unsafe=allow_unsafe), path)
    model = vfm.vfm
    # BEiT v1 pre-training checkpoints share one relative position table across blocks;
    # give each block a copy when the model has per-block tables.
    shared = state.pop("rel_pos_bias.relative_position_bias_table", None)
    if shared is not None:
        if getattr(model, "rel_pos_bias", None) is not None:
            state["rel_pos_bias.relative_position_bias_table"] = shared
        else:
            for i in range(len(model.blocks)):
                state.setdefault(f"blocks.{i}.attn.relative_position_bias_table", shared.clone())
    _resize_rel_pos_tables(model, state, path, rel_pos_resize)
    family = importlib.import_module(type(model).__module__)
    state = family.checkpoint_filter_fn(state, model)
    return _load(model, state, path, "VFM")


def load_cspd_weights(cspd, path: str, allow_unsafe: bool = False) -> LoadReport:
    """Load a published classifier checkpoint into the CSPD's encoder(s): official or timm
    ConvNeXt, or for the other Table-6 encoders (ResNet, Swin, ...) the timm checkpoint of the
    same model, converted by timm's own pretrained-loading path.

    The per-modality stage norms are HAPNet's own and keep their initialisation.
    """
    state = _unwrap(safe_torch_load(path, allow_unsafe=allow_unsafe), path)
    if cspd.is_convnext:
        from timm.models.convnext import checkpoint_filter_fn

        def converted(net):
            return checkpoint_filter_fn(dict(state), net)
    else:
        try:
            encoder_state = cspd.pretrained_encoder(dict(state)).state_dict()
        except RuntimeError as e:  # timm's strict load into the full classifier
            details = " ".join(str(e).splitlines())[:500]
            raise ValueError(f"{path}: CSPD weights do not fit the configured encoder: {details}") from e

        def converted(net):
            return encoder_state
    report = None
    for _, net in cspd.networks():
        report = _load(net, converted(net), path, "CSPD")
    return report
