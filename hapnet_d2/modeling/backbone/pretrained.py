"""Load published VFM and ConvNeXt checkpoints from local files into the HAPNet encoder.

Accepted layouts:
- VFM: timm state dicts; the official BEiT / BEiTv2 ``.pth`` (weights under ``"model"``, per-block
  or shared ``rel_pos_bias`` tables made for 224x224, ``cls_token`` and no ``pos_embed``); DeiT /
  DINOv2 checkpoints in timm's or their authors' layout. Relative-position tables, position
  embeddings and patch embeddings are resized to the model by timm's own ``checkpoint_filter_fn``.
- CSPD: official ConvNeXt (``downsample_layers``/``stages.i.j``) and timm ConvNeXt, loaded into the
  shared network (and the thermal one when weights are separate).

Files are read with ``weights_only=True`` (see :func:`hapnet_d2.checkpoint.safe_torch_load`).
Missing and unexpected keys are logged and returned.
"""
import importlib
import logging
from typing import Dict, List, NamedTuple

import torch
from torch import nn

from hapnet_d2.checkpoint import safe_torch_load

logger = logging.getLogger(__name__)

__all__ = ["load_vfm_weights", "load_cspd_weights", "LoadReport"]

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


def load_vfm_weights(vfm, path: str, allow_unsafe: bool = False) -> LoadReport:
    """Load a ViT/BEiT checkpoint into a :class:`~hapnet_d2.modeling.backbone.timm_vit.TimmViT`.

    Args:
        vfm: the VFM wrapper (its ``.vfm`` is the timm model).
        path: local checkpoint file.
    Returns:
        the missing / unexpected / deliberately ignored keys.
    """
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
