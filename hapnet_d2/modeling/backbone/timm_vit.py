"""The vision foundation model (VFM) branch: a timm ViT / BEiT / DeiT / DINOv2 split into stages.

HAPNet runs the VFM's transformer blocks in four groups ("stages") and fuses them with the
CSPD's spatial prior between groups, so the VFM is used piecewise: :meth:`TimmViT.embed` turns
an image into tokens, :meth:`TimmViT.forward_stage` runs one group of blocks. The timm model
is kept intact as ``self.vfm`` so that published checkpoints load with timm's own key names.
"""
import contextlib
import functools
import logging
import weakref
from typing import Dict, List, Sequence, Tuple

import timm
import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["TimmViT", "relative_position_bias", "cached_relative_position_bias",
           "clear_relative_position_bias_cache", "relative_position_bias_cache_of"]


def relative_position_bias(attn: nn.Module) -> torch.Tensor:
    """BEiT's per-block relative position bias, gathered straight into the head-first layout.

    Same values as timm's ``Attention._get_rel_pos_bias`` (which gathers ``[N*N, heads]`` and
    then permutes to a contiguous copy): one ``index_select`` on the transposed table, about 3x
    faster on CPU, where this bias cost a third of a BEiT-B block at 480x480.

    Args:
        attn: a timm BEiT ``Attention`` with ``relative_position_bias_table``
            ``[num_relative_distance, heads]`` and ``relative_position_index`` ``[N, N]``
            (N = tokens including the cls token).
    Returns:
        ``[1, heads, N, N]``.
    """
    index = attn.relative_position_index
    table = attn.relative_position_bias_table.t()  # [heads, num_relative_distance]
    return table.index_select(1, index.reshape(-1)).view(1, -1, *index.shape)


# Cached biases kept per attention module: at most this many token grids (input sizes) each.
REL_POS_CACHE_SIZES = 4
# attention module -> {index shape: (table stamp, index stamp, bias)}; held outside the modules
# so that pickling or deep-copying a model never carries (or trips over) the cache
_BIAS_CACHES = weakref.WeakKeyDictionary()


def _tensor_stamp(t: torch.Tensor) -> Tuple:
    """What identifies the current values of ``t``: the tensor object (weakly referenced, so
    the stamp keeps nothing alive), its storage address, in-place version, dtype and device.
    Tensors made under ``torch.inference_mode`` have no version counter (-1)."""
    version = -1 if t.is_inference() else t._version
    return (weakref.ref(t), t.data_ptr(), version, t.dtype, t.device)


def _stamp_matches(stamp: Tuple, t: torch.Tensor) -> bool:
    ref, *rest = stamp
    return ref() is t and tuple(rest) == _tensor_stamp(t)[1:]


def _caching_allowed() -> bool:
    """Only in plain no-grad inference: training needs the gather in the autograd graph, and
    tracing / export / compilation would bake the cached ``[1, heads, N, N]`` tensors into the
    graph as constants."""
    if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if torch.onnx.is_in_onnx_export():
        return False
    return not torch.compiler.is_compiling()


def cached_relative_position_bias(attn: nn.Module) -> torch.Tensor:
    """:func:`relative_position_bias`, computed once per token grid and reused while the weights
    are unchanged (at 480x480 the 12 gathers of BEiT-B cost 7-15% of a CPU call).

    The cache is kept per module (weakly keyed, see :func:`relative_position_bias_cache_of`) and
    an entry is used only if the table and the index are the very tensors it was computed
    from, at the same address and in-place version (``load_state_dict``, ``.to()``, an in-place
    update or :meth:`TimmViT.token_grid` all change one of these), so the result is always the
    tensor the uncached function would return. Outside no-grad inference (training, tracing,
    export, ``torch.compile``) it computes the bias every call and caches nothing.

    Args:
        attn: a timm BEiT ``Attention`` (see :func:`relative_position_bias`).
    Returns:
        ``[1, heads, N, N]``.
    """
    if not _caching_allowed():
        return relative_position_bias(attn)
    table, index = attn.relative_position_bias_table, attn.relative_position_index
    cache = _BIAS_CACHES.setdefault(attn, {})
    key = tuple(index.shape)
    entry = cache.get(key)
    if entry is not None and _stamp_matches(entry[0], table) and _stamp_matches(entry[1], index):
        return entry[2]
    bias = relative_position_bias(attn)
    cache.pop(key, None)
    while len(cache) >= REL_POS_CACHE_SIZES:
        cache.pop(next(iter(cache)))  # the oldest size
    cache[key] = (_tensor_stamp(table), _tensor_stamp(index), bias)
    return bias


def relative_position_bias_cache_of(attn: nn.Module) -> Dict:
    """The cached biases of one attention module: ``{(N, N): (table stamp, index stamp, bias)}``
    (empty when nothing is cached)."""
    return _BIAS_CACHES.get(attn, {})


def clear_relative_position_bias_cache(module: nn.Module) -> None:
    """Drop the cached biases of every attention module under ``module`` (frees their memory)."""
    for m in module.modules():
        _BIAS_CACHES.pop(m, None)


class TimmViT(nn.Module):
    """A timm plain ViT (any of ``Beit`` or ``VisionTransformer``) used in stages.

    Tokens are always at stride 16: models with another patch size (DINOv2 uses 14) are built
    with ``patch_size=16`` and their patch embedding is resampled when weights are loaded.
    """

    def __init__(
        self,
        *,
        name: str,
        img_size: Tuple[int, int],
        stages: Sequence[Sequence[int]],
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 0.0,
        extra_kwargs: Dict = None,
        cache_rel_pos_bias: bool = True,
    ):
        """
        Args:
            name: timm model name, e.g. ``beitv2_base_patch16_224`` or ``deit_small_patch16_224``.
            img_size: (H, W) the model is built for (the training crop). It fixes BEiT's
                relative-position window and ViT's absolute position grid.
            stages: four ``[first, last]`` block index pairs (inclusive), covering all blocks.
            drop_path_rate: stochastic depth rate of the blocks.
            layer_scale_init: layer-scale init value; 0 keeps the timm model's own default
                (use 0 for models without layer scale, such as DeiT).
            extra_kwargs: more keyword arguments for ``timm.create_model``.
            cache_rel_pos_bias: in no-grad inference, keep each block's relative-position bias
                per token grid (:func:`cached_relative_position_bias`) instead of gathering it
                from the table every call.
        """
        super().__init__()
        kwargs = dict(extra_kwargs or {})
        if layer_scale_init > 0:
            kwargs["init_values"] = layer_scale_init
        try:
            self.vfm = timm.create_model(
                name,
                pretrained=False,
                img_size=tuple(img_size),
                patch_size=16,
                num_classes=0,
                drop_path_rate=drop_path_rate,
                **kwargs,
            )
        except RuntimeError as e:  # timm raises RuntimeError for unknown names
            raise ValueError(f"MODEL.HAPNET.VFM_NAME={name!r} is not a timm model: {e}") from e
        if not hasattr(self.vfm, "blocks") or not hasattr(self.vfm, "patch_embed"):
            raise ValueError(f"MODEL.HAPNET.VFM_NAME={name!r} is not a plain ViT (no blocks)")
        # Parts of the classifier that HAPNet never runs: drop them so that every remaining
        # parameter is trained (and DDP sees no unused parameters).
        for attr in ("norm", "fc_norm", "head", "head_drop"):
            if isinstance(getattr(self.vfm, attr, None), nn.Module):
                setattr(self.vfm, attr, nn.Identity())
        for attr in ("mask_token", "attn_pool"):
            if getattr(self.vfm, attr, None) is not None:
                setattr(self.vfm, attr, None)

        depth = len(self.vfm.blocks)
        covered = [i for first, last in stages for i in range(first, last + 1)]
        if len(stages) != 4 or covered != list(range(depth)):
            raise ValueError(
                f"MODEL.HAPNET.VFM_STAGES={list(map(list, stages))} must split the {depth} blocks "
                f"of {name} into 4 consecutive [first, last] groups"
            )
        self.stages = [list(range(first, last + 1)) for first, last in stages]
        self.embed_dim = self.vfm.embed_dim
        self.depth = depth
        self.num_prefix_tokens = getattr(self.vfm, "num_prefix_tokens", 1)
        self.is_beit = hasattr(self.vfm, "rel_pos_bias")
        for block in self.vfm.blocks if cache_rel_pos_bias else ():
            if getattr(block.attn, "relative_position_bias_table", None) is not None:
                # instance attribute shadowing timm's method (see cached_relative_position_bias)
                block.attn._get_rel_pos_bias = functools.partial(cached_relative_position_bias, block.attn)
        self.window = tuple(self.vfm.patch_embed.grid_size)
        self._grid_cache = {}  # (module id, grid) -> (weight stamp, resized window state)

    def embed(self, image: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Patch-embed an image (no prefix tokens, no position embedding yet).

        Args:
            image: ``[B, 3, H, W]`` normalised, H and W multiples of 16.
        Returns:
            tokens ``[B, H/16 * W/16, D]`` and the token grid ``(H/16, W/16)``.
        """
        pe = self.vfm.patch_embed
        x = pe.proj(image)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        return pe.norm(x), grid

    def add_prefix_and_position(self, tokens: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """Attach cls / register tokens and absolute position embeddings.

        Args:
            tokens: ``[B, N, D]`` patch tokens on ``grid``.
        Returns:
            ``[B, P + N, D]`` with the P prefix tokens first.
        """
        if self.is_beit:
            cls = self.vfm.cls_token.expand(tokens.shape[0], -1, -1)
            x = torch.cat([cls, tokens], dim=1)
            if self.vfm.pos_embed is not None:
                pos = self.vfm.pos_embed
                if grid != self.window:
                    pos = timm.layers.resample_abs_pos_embed(
                        pos, new_size=grid, old_size=self.window, num_prefix_tokens=1
                    )
                x = x + pos
            return self.vfm.pos_drop(x)
        x = tokens.reshape(tokens.shape[0], grid[0], grid[1], -1)
        if not self.vfm.dynamic_img_size:
            x = x.flatten(1, 2)
        x = self.vfm._pos_embed(x)
        x = self.vfm.patch_drop(x)
        return self.vfm.norm_pre(x)

    def forward_stage(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Run the blocks of one stage.

        Args:
            x: ``[B, P + N, D]`` tokens with prefix tokens.
            stage: 0..3.
        Returns:
            ``[B, P + N, D]``.
        """
        if self.is_beit:
            shared = self.vfm.rel_pos_bias() if self.vfm.rel_pos_bias is not None else None
            for i in self.stages[stage]:
                x = self.vfm.blocks[i](x, shared_rel_pos_bias=shared)
        else:
            for i in self.stages[stage]:
                x = self.vfm.blocks[i](x)
        return x

    @contextlib.contextmanager
    def token_grid(self, grid: Tuple[int, int]):
        """Temporarily use BEiT's relative-position tables resized for another token grid.

        Used by whole-image inference on inputs of another size than the training crop. Tables
        are resized with timm's own interpolation (``set_window_size``) once per grid and cached
        until the weights change; the module's own tables are restored on exit. Plain ViTs
        resample their absolute position embedding per call and need nothing here.
        """
        grid = tuple(grid)
        modules = [
            m
            for m in self.vfm.modules()
            if hasattr(m, "set_window_size") and getattr(m, "relative_position_bias_table", None) is not None
        ]
        if grid == self.window or not modules:
            yield
            return
        if self.training:
            raise RuntimeError(
                f"the VFM is built for a {self.window} token grid (INPUT.CROP.SIZE); training on a "
                f"{grid} grid is not supported, use square crops of the configured size"
            )
        own = [_window_state(m) for m in modules]
        try:
            for m, state in zip(modules, own):
                _set_window_state(m, self._resized_state(m, state, grid))
            yield
        finally:
            for m, state in zip(modules, own):
                _set_window_state(m, state)

    def _resized_state(self, module: nn.Module, own: Dict, grid: Tuple[int, int]) -> Dict:
        """The window state of ``module`` for ``grid``, from the cache if the weights are unchanged."""
        table = own["relative_position_bias_table"]
        stamp = (table.data_ptr(), table._version)
        key = (id(module), grid)
        cached = self._grid_cache.get(key)
        if cached is None or cached[0] != stamp:
            with torch.no_grad():
                module.set_window_size(grid)
            cached = (stamp, _window_state(module))
            self._grid_cache[key] = cached
            _set_window_state(module, own)
        return cached[1]

    def no_weight_decay(self) -> List[str]:
        """Names (relative to this module) that timm excludes from weight decay."""
        names = self.vfm.no_weight_decay() if hasattr(self.vfm, "no_weight_decay") else set()
        return ["vfm." + n for n in names]


_WINDOW_ATTRS = ("window_size", "window_area", "num_relative_distance", "relative_position_bias_table")


def _window_state(module: nn.Module) -> Dict:
    """The attributes of a timm relative-position module that depend on its window."""
    state = {a: getattr(module, a) for a in _WINDOW_ATTRS if hasattr(module, a)}
    state["relative_position_index"] = module.relative_position_index
    return state


def _set_window_state(module: nn.Module, state: Dict) -> None:
    for attr, value in state.items():
        if attr == "relative_position_index":
            module.register_buffer(attr, value, persistent=False)
        else:
            setattr(module, attr, value)
