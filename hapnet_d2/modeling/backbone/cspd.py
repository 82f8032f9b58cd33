"""Cross-modal spatial prior descriptor (CSPD): a hierarchical timm encoder run on RGB and thermal.

Paper Sect. 3.2.2: the RGB and thermal images go through the same (weight-shared) ConvNeXt
stem, stages and downsampling layers; each modality keeps its own final LayerNorm per stage;
the two modalities' stage outputs are summed. ``shared_weights=False`` gives each modality its
own encoder (Table 6, "separate weights").

Table 6 also replaces ConvNeXt with other hierarchical encoders (ResNet-101, Swin-S). Any timm
encoder with four feature levels at strides 4, 8, 16, 32 works: ConvNeXt is kept as the plain
timm model under ``convnext`` (state-dict keys ``convnext.stem.*``, ``convnext.stages.{i}.*``, as
published ConvNeXt checkpoints), every other family is built with timm's ``features_only`` API
under ``encoder`` (its last four ``feature_info`` levels). The per-modality norms and the sum are
the same for all.
"""
import importlib
import re
from typing import List, Optional, Sequence, Tuple

import timm
import torch
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["CSPD", "cspd_layer_id"]

MODALITIES = ("rgb", "thermal")
STRIDES = [4, 8, 16, 32]


def _is_convnext(name: str, config_key: str) -> bool:
    """Whether the timm model ``name`` is a ConvNeXt (ValueError naming ``config_key`` if timm
    does not know it)."""
    if not timm.models.is_model(name):
        raise ValueError(f"{config_key}={name!r} is not a timm model")
    return timm.models.model_entrypoint(name).__module__ == "timm.models.convnext"


class CSPD(nn.Module):
    """Multi-scale spatial priors from RGB and/or thermal images."""

    def __init__(
        self,
        *,
        name: str,
        modalities: List[str],
        shared_weights: bool = True,
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1.0,
        img_size: Optional[Sequence[int]] = None,
        config_key: str = "MODEL.HAPNET.CSPD_NAME",
    ):
        """
        Args:
            name: timm encoder name: a ConvNeXt (``convnext_small``, ``convnext_atto``) or any
                hierarchical encoder with 4 feature levels at strides 4-32 (``resnet101``,
                ``swin_small_patch4_window7_224``, ...).
            modalities: the inputs it sees, a non-empty subset of ``["rgb", "thermal"]``.
            shared_weights: one encoder for both modalities (paper) or one each.
            drop_path_rate: stochastic depth rate.
            layer_scale_init: ConvNeXt layer-scale init (1.0 in the reference configuration);
                not used by other families.
            img_size: (H, W) the input size, for encoders built for a fixed size (Swin); not
                passed to encoders that do not take it.
            config_key: the config key that named the encoder, for error messages.
        """
        super().__init__()
        if not modalities or any(m not in MODALITIES for m in modalities):
            raise ValueError(f"CSPD modalities must be a non-empty subset of {MODALITIES}, got {modalities}")
        self.modalities = list(modalities)
        self.shared_weights = shared_weights or len(self.modalities) == 1
        self.is_convnext = _is_convnext(name, config_key)
        if self.is_convnext:
            self.convnext = self._build_convnext(name, drop_path_rate, layer_scale_init)
            if not self.shared_weights:
                self.convnext_thermal = self._build_convnext(name, drop_path_rate, layer_scale_init)
            info = self.convnext.feature_info
            self.channels = [i["num_chs"] for i in info]
            strides = [i["reduction"] for i in info]
        else:
            self._features_args = (name, drop_path_rate, img_size)
            try:
                self.encoder = self._build_features(*self._features_args)
                if not self.shared_weights:
                    self.encoder_thermal = self._build_features(*self._features_args)
            except (RuntimeError, TypeError, AssertionError) as e:
                raise ValueError(f"{config_key}={name!r} has no timm features_only encoder: {e}") from e
            self.channels = self.encoder.feature_info.channels()
            strides = self.encoder.feature_info.reduction()
        if strides != STRIDES:
            raise ValueError(
                f"{config_key}={name!r} must have 4 stages at strides {STRIDES}, got {strides}"
            )
        for modality in self.modalities:
            norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in self.channels)
            self.add_module(f"norms_{modality}", norms)

    @staticmethod
    def _build_convnext(name: str, drop_path_rate: float, layer_scale_init: float) -> nn.Module:
        model = timm.create_model(
            name, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate, ls_init_value=layer_scale_init,
        )
        # The classifier's head and pre-head norm are never run.
        model.head = nn.Identity()
        model.norm_pre = nn.Identity()
        return model

    @staticmethod
    def _create(name: str, img_size: Optional[Sequence[int]], **kwargs) -> nn.Module:
        """``timm.create_model``, passing ``img_size`` to the families built for a fixed size (Swin)."""
        if img_size is not None:
            try:
                return timm.create_model(name, img_size=tuple(img_size), **kwargs)
            except TypeError as e:  # the family takes any input size
                if "img_size" not in str(e):
                    raise
        return timm.create_model(name, **kwargs)

    @classmethod
    def _build_features(
        cls, name: str, drop_path_rate: float, img_size: Optional[Sequence[int]], pretrained_state: Optional[dict] = None
    ) -> nn.Module:
        """``features_only`` model returning its last four feature levels, with ``pretrained_state``
        (a state dict of the full timm classifier) loaded by timm before it drops the classifier."""
        kwargs = dict(features_only=True, out_indices=(-4, -3, -2, -1), drop_path_rate=drop_path_rate)
        if pretrained_state is None:
            kwargs["pretrained"] = False
        else:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(state_dict=pretrained_state))
        return cls._create(name, img_size, **kwargs)

    def pretrained_encoder(self, state: dict) -> nn.Module:
        """A non-ConvNeXt encoder like ``self.encoder`` with a published classifier checkpoint
        loaded: converted by the timm family's ``checkpoint_filter_fn``, loaded strictly into the
        full classifier (RuntimeError naming the keys that do not fit), then cut to features by timm.
        Its state dict has ``self.encoder``'s keys."""
        if self.is_convnext:
            raise TypeError("pretrained_encoder is for non-ConvNeXt encoders; ConvNeXt loads its checkpoint directly")
        name, drop_path_rate, img_size = self._features_args
        classifier = self._create(name, img_size, pretrained=False)
        family = importlib.import_module(type(classifier).__module__)
        if hasattr(family, "checkpoint_filter_fn"):
            state = family.checkpoint_filter_fn(state, classifier)
        classifier.load_state_dict(state)
        return self._build_features(name, drop_path_rate, img_size, pretrained_state=classifier.state_dict())

    def networks(self) -> List[Tuple[Tuple[str, ...], nn.Module]]:
        """``(modalities, network)`` pairs in the order the modalities are run."""
        prefix = "convnext" if self.is_convnext else "encoder"
        if self.shared_weights:
            return [(tuple(self.modalities), getattr(self, prefix))]
        return [(("rgb",), getattr(self, prefix)), (("thermal",), getattr(self, f"{prefix}_thermal"))]

    def _stage_outputs(self, net: nn.Module, x: torch.Tensor):
        """Yield the four stage outputs ``[B, C_i, H/s, W/s]`` of ``net`` for the batch ``x``."""
        if self.is_convnext:
            x = net.stem(x)
            for stage in net.stages:
                x = stage(x)
                yield x
            return
        channels_last = getattr(net, "output_fmt", "NCHW") == "NHWC"  # Swin
        for feat in net(x):
            yield feat.permute(0, 3, 1, 2) if channels_last else feat

    def forward(self, rgb: Optional[torch.Tensor], thermal: Optional[torch.Tensor]) -> List[torch.Tensor]:
        """
        Args:
            rgb: ``[B, 3, H, W]`` normalised RGB (may be None if not a CSPD modality).
            thermal: ``[B, 3, H, W]`` normalised thermal (may be None likewise).
        Returns:
            Four maps ``[B, C_i, H/s, W/s]`` for strides 4, 8, 16, 32: per stage, the sum over
            modalities of the modality's normalised stage output.
        """
        inputs = {"rgb": rgb, "thermal": thermal}
        outs = [0, 0, 0, 0]
        for modalities, net in self.networks():
            # modalities sharing weights run as one batch
            x = torch.cat([inputs[m] for m in modalities], dim=0)
            for i, feat in enumerate(self._stage_outputs(net, x)):
                for m, part in zip(modalities, feat.chunk(len(modalities), dim=0)):
                    outs[i] = outs[i] + getattr(self, f"norms_{m}")[i](part)
        return outs


# Layer ids for layer-wise lr decay (used by hapnet_d2.solver.build.get_layer_id).
_NETWORK = re.compile(r"^(?:convnext|encoder)(?:_thermal)?\.(.+)$")
_STAGE = re.compile(r"^(?:stages|layers)[._](\d+)\.(.+)$")  # ConvNeXt, Swin, PVTv2 (0-based)
_RESNET_LAYER = re.compile(r"^layer([1-4])\.")  # ResNet family (1-based)


def cspd_layer_id(name: str) -> Optional[int]:
    """
    Layer id of a CSPD parameter for layer-wise lr decay (the reference recipe: CNN stage ``i`` (0..3)
    -> ``i + 1``, downsampling layers -> 0), for every encoder family the CSPD builds:

    * ConvNeXt (``convnext{,_thermal}.``): ``stem.*`` and ``stages.{i}.downsample.*`` -> 0,
      ``stages.{i}.blocks.*`` -> ``i + 1``;
    * Swin (``encoder{,_thermal}.``, timm features_only names): ``patch_embed.*`` and
      ``layers_{i}.downsample.*`` (patch merging) -> 0, ``layers_{i}.blocks.*`` -> ``i + 1``;
      likewise ``stages_{i}`` (PVTv2 and other ``stages`` families);
    * ResNet: the stem (``conv1.*``, ``bn1.*``) -> 0, ``layer{k}.*`` -> ``k`` (stage ``k - 1``). ResNet
      has no separate downsampling layer: a block's strided conv and projection shortcut
      (``layer{k}.0.downsample``) belong to its stage;
    * any other parameter of the network, outside its four stages (a stem) -> 0.

    Args:
        name: parameter name relative to the CSPD module (e.g. ``convnext.stages.2.blocks.0.gamma``).
    Returns:
        The id, or None for parameters that are not the encoder's own (the per-modality norms),
        which get the full learning rate.
    """
    network = _NETWORK.match(name)
    if not network:
        return None
    rest = network.group(1)
    stage = _STAGE.match(rest)
    if stage:
        return 0 if stage.group(2).startswith("downsample.") else int(stage.group(1)) + 1
    layer = _RESNET_LAYER.match(rest)
    if layer:
        return int(layer.group(1))
    return 0
