"""HAPNet meta-architecture: RGB-T inputs -> hybrid encoder -> Mask2Former head -> outputs.

Inputs follow Detectron2's convention: a list of dicts, one per image, with
- ``"image"``: ``[3, H, W]`` uint8 or float (0-255) in ``cfg.INPUT.FORMAT`` channel order,
- ``"thermal"``: ``[1, H, W]`` or ``[3, H, W]`` (0-255; one channel is replicated to three),
- ``"sem_seg"`` (training): ``[H, W]`` long, ``ignore_value`` (255) ignored,
- ``"instances"`` (training, optional): ``Instances`` with ``gt_classes`` [N] and ``gt_masks``
  [N, H, W]; when every input has them the decoder is trained with one mask per segment,
- ``"height"``, ``"width"`` (optional): the output size (defaults to the input size).
Outputs, as ``MODEL.MASK_FORMER.TEST.{SEMANTIC,PANOPTIC,INSTANCE}_ON`` request:
``[{"sem_seg": [K, height, width], "panoptic_seg": (ids [height, width] int32, segments_info),
"instances": Instances}]``, all from the same queries.
"""
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from ..backbone.hapnet_backbone import resolve_norm
from ..criterion import SetCriterion
from ..heads.aux_head import AuxFCNHead
from ..instance_targets import instances_to_mask_targets
from ..postprocessing import instance_inference, panoptic_inference
from ..semantic_targets import semantic_inference, semantic_to_mask_targets

__all__ = ["HAPNet", "thing_ids_of"]


def thing_ids_of(cfg) -> Tuple[int, ...]:
    """Contiguous thing-class ids of ``DATASETS.TEST[0]`` (``DATASETS.TRAIN[0]`` when TEST is
    empty): the values of its metadata's ``thing_dataset_id_to_contiguous_id``, as Mask2Former.

    Raises:
        ValueError: no dataset is named, or its metadata has no ``thing_dataset_id_to_contiguous_id``.
    """
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("MODEL.MASK_FORMER.TEST.PANOPTIC_ON/INSTANCE_ON need DATASETS.TEST (or TRAIN) "
                         "to name a panoptic dataset, whose metadata says which classes are things")
    mapping = MetadataCatalog.get(names[0]).get("thing_dataset_id_to_contiguous_id", None)
    if mapping is None:
        raise ValueError(
            f"dataset {names[0]!r} has no panoptic metadata (thing_dataset_id_to_contiguous_id), "
            f"needed by MODEL.MASK_FORMER.TEST.PANOPTIC_ON/INSTANCE_ON: use a *_panoptic_* dataset "
            f"or turn them off"
        )
    return tuple(sorted({int(v) for v in mapping.values()}))


@META_ARCH_REGISTRY.register()
class HAPNet(nn.Module):
    """Hybrid asymmetric RGB-T scene parser with a mask-classification decoder."""

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        aux_head: nn.Module = None,
        aux_loss_weight: float = 0.4,
        num_classes: int,
        ignore_value: int = 255,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        thermal_mean: Tuple[float, ...],
        thermal_std: Tuple[float, ...],
        input_format: str = "RGB",
        test_mode: str = "slide",
        slide_crop: Tuple[int, int] = (480, 480),
        slide_stride: Tuple[int, int] = (320, 320),
        semantic_on: bool = True,
        panoptic_on: bool = False,
        instance_on: bool = False,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        test_topk_per_image: int = 100,
        thing_ids: Sequence[int] = (),
    ):
        """
        Args:
            backbone: :class:`HAPNetBackbone` (takes RGB and thermal).
            sem_seg_head: Mask2Former head: features -> ``pred_logits``, ``pred_masks``.
            criterion: set criterion (matching + class/mask/dice losses, deep supervision).
            aux_head: training-only per-pixel head on res2 (None: off).
            pixel_mean/std: RGB normalisation on the 0-255 scale; thermal_mean/std likewise.
            input_format: channel order of ``"image"`` ("RGB" or "BGR").
            test_mode: "slide" (windows of ``slide_crop`` every ``slide_stride``) or "whole".
            semantic_on / panoptic_on / instance_on: which outputs inference returns.
            object_mask_threshold, overlap_threshold: panoptic rules (see
                :func:`~hapnet_d2.modeling.postprocessing.panoptic_inference`).
            test_topk_per_image: instance candidates per image.
            thing_ids: contiguous ids of the thing classes; any other class is stuff.
        """
        super().__init__()
        if test_mode not in ("slide", "whole"):
            raise ValueError(f"TEST.MODE must be 'slide' or 'whole', got {test_mode!r}")
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {input_format!r}")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.aux_head = aux_head
        self.aux_loss_weight = aux_loss_weight
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.input_format = input_format
        self.test_mode = test_mode
        self.slide_crop = tuple(slide_crop)
        self.slide_stride = tuple(slide_stride)
        if not (semantic_on or panoptic_on or instance_on):
            raise ValueError("MODEL.MASK_FORMER.TEST: SEMANTIC_ON, PANOPTIC_ON and INSTANCE_ON are all off")
        self.semantic_on = semantic_on
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.test_topk_per_image = test_topk_per_image
        self.thing_ids = tuple(sorted({int(i) for i in thing_ids}))
        self.has_stuff = len(set(range(num_classes)) - set(self.thing_ids)) > 0
        self.size_divisibility = backbone.size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.register_buffer("thermal_mean", torch.tensor(thermal_mean).view(-1, 1, 1), False)
        self.register_buffer("thermal_std", torch.tensor(thermal_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        aux = cfg.MODEL.HAPNET.AUX_HEAD
        aux_head = None
        if aux.ENABLED:
            aux_head = AuxFCNHead(
                backbone.output_shape()["res2"].channels,
                aux.CHANNELS,
                num_classes,
                dropout=aux.DROPOUT,
                norm=resolve_norm(cfg.MODEL.HAPNET.OUT_NORM),
                ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        test = cfg.MODEL.MASK_FORMER.TEST
        return dict(
            backbone=backbone,
            sem_seg_head=sem_seg_head,
            criterion=SetCriterion(cfg),
            aux_head=aux_head,
            aux_loss_weight=aux.LOSS_WEIGHT,
            num_classes=num_classes,
            ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            pixel_mean=cfg.MODEL.PIXEL_MEAN,
            pixel_std=cfg.MODEL.PIXEL_STD,
            thermal_mean=cfg.MODEL.THERMAL_PIXEL_MEAN,
            thermal_std=cfg.MODEL.THERMAL_PIXEL_STD,
            input_format=cfg.INPUT.FORMAT,
            test_mode=cfg.TEST.MODE,
            slide_crop=cfg.TEST.SLIDE_CROP,
            slide_stride=cfg.TEST.SLIDE_STRIDE,
            semantic_on=test.SEMANTIC_ON,
            panoptic_on=test.PANOPTIC_ON,
            instance_on=test.INSTANCE_ON,
            object_mask_threshold=test.OBJECT_MASK_THRESHOLD,
            overlap_threshold=test.OVERLAP_THRESHOLD,
            test_topk_per_image=test.TEST_TOPK_PER_IMAGE,
            thing_ids=thing_ids_of(cfg) if test.PANOPTIC_ON or test.INSTANCE_ON else (),
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ inputs
    def _normalised_pair(self, x: Dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """One input dict -> normalised RGB ``[3, H, W]`` and thermal ``[3, H, W]``."""
        name = x.get("file_name", "input")
        if "image" not in x or "thermal" not in x:
            raise KeyError(f"{name}: every input needs 'image' and 'thermal' tensors, got keys {sorted(x)}")
        image, thermal = x["image"], x["thermal"]
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"{name}: 'image' must be [3,H,W], got {tuple(image.shape)}")
        if thermal.dim() == 2:
            thermal = thermal[None]
        if thermal.dim() != 3 or thermal.shape[0] not in (1, 3):
            raise ValueError(f"{name}: 'thermal' must be [1,H,W] or [3,H,W], got {tuple(thermal.shape)}")
        if thermal.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"{name}: RGB is {tuple(image.shape[-2:])} but thermal is {tuple(thermal.shape[-2:])} (H, W)"
            )
        image = image.to(self.device, torch.float32)
        if self.input_format == "BGR":
            image = image.flip(0)
        thermal = thermal.to(self.device, torch.float32).expand(3, -1, -1)
        return (image - self.pixel_mean) / self.pixel_std, (thermal - self.thermal_mean) / self.thermal_std

    def _batch(self, batched_inputs: List[Dict]) -> Tuple[ImageList, torch.Tensor]:
        pairs = [self._normalised_pair(x) for x in batched_inputs]
        rgb = ImageList.from_tensors([p[0] for p in pairs], self.size_divisibility)
        thermal = ImageList.from_tensors([p[1] for p in pairs], self.size_divisibility)
        return rgb, thermal.tensor

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: list of dicts as described in the module docstring.
        Returns:
            training: dict of weighted losses (``loss_ce``, ``loss_mask``, ``loss_dice``, their
            ``_i`` deep-supervision copies, ``loss_aux``); inference: ``[{"sem_seg": [K, h, w]}]``.
        """
        if self.training:
            return self._losses(batched_inputs)
        return self._predict(batched_inputs)

    def _losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        rgb, thermal = self._batch(batched_inputs)
        missing = [x.get("file_name", i) for i, x in enumerate(batched_inputs) if "sem_seg" not in x]
        if missing:
            raise KeyError(f"training needs 'sem_seg' in every input; missing for {missing}")
        gt = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs], self.size_divisibility, self.ignore_value
        ).tensor.long()
        if gt.shape[-2:] != rgb.tensor.shape[-2:]:
            raise ValueError(f"labels of size {tuple(gt.shape[-2:])} do not match images of size "
                             f"{tuple(rgb.tensor.shape[-2:])} in {[x.get('file_name') for x in batched_inputs]}")
        features = self.backbone(rgb.tensor, thermal)
        outputs = self.sem_seg_head(features)
        if all("instances" in x for x in batched_inputs):  # panoptic training: one mask per segment
            targets = self._segment_targets(batched_inputs, rgb)
        else:
            names = [x.get("sem_seg_file_name") or x.get("file_name") or f"image {i} of the batch"
                     for i, x in enumerate(batched_inputs)]  # named in label errors
            targets = semantic_to_mask_targets(gt, self.num_classes, self.ignore_value, names)
        losses = self.criterion(outputs, targets)
        for k in list(losses):
            if k in self.criterion.weight_dict:
                losses[k] = losses[k] * self.criterion.weight_dict[k]
            else:
                losses.pop(k)
        if self.aux_head is not None:
            losses["loss_aux"] = self.aux_loss_weight * self.aux_head.loss(self.aux_head(features["res2"]), gt)
        return losses

    def _segment_targets(self, batched_inputs: List[Dict], rgb: ImageList) -> List[Dict[str, torch.Tensor]]:
        """Criterion targets from the inputs' ``"instances"``: ``labels`` [N] and ``masks``
        [N, H, W] zero-padded like the images (padding belongs to no segment)."""
        return instances_to_mask_targets(
            [x["instances"] for x in batched_inputs],
            tuple(rgb.tensor.shape[-2:]),
            self.num_classes,
            file_names=[x.get("file_name") for x in batched_inputs],
            device=self.device,
            image_sizes=rgb.image_sizes,
        )

    def _predict(self, batched_inputs: List[Dict]) -> List[Dict]:
        """The requested outputs of every input. In whole mode, inputs of the same size run as
        one batch (test-time augmentation passes a flipped copy with each image); sliding
        windows run image by image."""
        pairs = [self._normalised_pair(x) for x in batched_inputs]
        whole = self.test_mode == "whole"
        queries = self.panoptic_on or self.instance_on
        groups = defaultdict(list)  # whole: input size -> indices; slide: one group per input
        for i, (rgb, _) in enumerate(pairs):
            groups[tuple(rgb.shape[-2:]) if whole else i].append(i)
        outputs = [None] * len(pairs)
        for indices in groups.values():
            rgb = torch.stack([pairs[i][0] for i in indices])
            thermal = torch.stack([pairs[i][1] for i in indices])
            batch = self._whole_outputs(rgb, thermal, queries) if whole else self._slide_outputs(rgb, thermal, queries)
            for j, i in enumerate(indices):
                outputs[i] = {k: v[j] for k, v in batch.items()}
        results = []
        for x, (rgb, _), out in zip(batched_inputs, pairs, outputs):
            height, width = rgb.shape[-2:]
            results.append(self._postprocess(out, (height, width), x.get("height", height), x.get("width", width)))
        return results

    def _postprocess(self, out: Dict[str, torch.Tensor], size: Tuple[int, int], out_h: int, out_w: int) -> Dict:
        """One image's outputs at the output size.

        Args:
            out: ``sem_seg`` [K, H, W] scores and, when panoptic or instance output is on,
                ``pred_logits`` [Q, K+1] and ``pred_masks`` [Q, H, W] logits, at the input size.
            size: the input size (H, W); out_h, out_w: the output size.
        Returns:
            ``sem_seg`` / ``panoptic_seg`` / ``instances`` as requested. As in Mask2Former, mask
            logits are resized to the output size before panoptic and instance inference.
        """
        result = {}
        if self.semantic_on:
            result["sem_seg"] = sem_seg_postprocess(out["sem_seg"], size, out_h, out_w)
        if not (self.panoptic_on or self.instance_on):
            return result
        with torch.autocast(out["pred_masks"].device.type, enabled=False):
            masks = sem_seg_postprocess(out["pred_masks"].float(), size, out_h, out_w)
            logits = out["pred_logits"].float()
            if self.panoptic_on:
                result["panoptic_seg"] = panoptic_inference(
                    logits,
                    masks,
                    thing_ids=self.thing_ids,
                    object_mask_threshold=self.object_mask_threshold,
                    overlap_threshold=self.overlap_threshold,
                )
            if self.instance_on:
                result["instances"] = instance_inference(
                    logits,
                    masks,
                    num_classes=self.num_classes,
                    thing_ids=self.thing_ids,
                    has_stuff=self.has_stuff,
                    topk=self.test_topk_per_image,
                )
        return result

    @contextmanager
    def semantic_only(self) -> Iterator[None]:
        """Within the block, inference returns ``"sem_seg"`` only (test-time augmentation uses it)."""
        saved = self.semantic_on, self.panoptic_on, self.instance_on
        self.semantic_on, self.panoptic_on, self.instance_on = True, False, False
        try:
            yield
        finally:
            self.semantic_on, self.panoptic_on, self.instance_on = saved

    @torch.no_grad()
    def whole_inference(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        """One pass over whole images (padded to a multiple of 32).

        Args:
            rgb, thermal: ``[B, 3, H, W]`` normalised.
        Returns:
            ``[B, K, H, W]`` float32 semantic scores (also under autocast).
        """
        return self._whole_outputs(rgb, thermal)["sem_seg"]

    @torch.no_grad()
    def _whole_outputs(self, rgb: torch.Tensor, thermal: torch.Tensor, queries: bool = False) -> Dict[str, torch.Tensor]:
        """One pass over whole images (padded to a multiple of 32).

        Args:
            rgb, thermal: ``[B, 3, H, W]`` normalised.
            queries: also return the per-query predictions.
        Returns:
            ``sem_seg`` [B, K, H, W] float32 scores and, with ``queries``, ``pred_logits``
            [B, Q, K+1] and ``pred_masks`` [B, Q, H, W] float32 logits (masks upsampled to the
            input size), also under autocast.
        """
        height, width = rgb.shape[-2:]
        div = self.size_divisibility
        pad = (0, (-width) % div, 0, (-height) % div)
        features = self.backbone(F.pad(rgb, pad), F.pad(thermal, pad))
        outputs = self.sem_seg_head(features)
        # scores are formed in float32 also under autocast: bf16 would tie close classes
        with torch.autocast(rgb.device.type, enabled=False):
            masks = F.interpolate(
                outputs["pred_masks"].float(),
                size=(height + pad[3], width + pad[1]),
                mode="bilinear",
                align_corners=False,
            )[..., :height, :width]
            logits = outputs["pred_logits"].float()
            result = {"sem_seg": torch.stack([semantic_inference(c, m) for c, m in zip(logits, masks)])}
            if queries:
                result.update(pred_logits=logits, pred_masks=masks)
            return result

    @torch.no_grad()
    def slide_inference(self, rgb: torch.Tensor, thermal: torch.Tensor) -> torch.Tensor:
        """Sliding-window semantic scores (see :meth:`_slide_outputs`).

        Args:
            rgb, thermal: ``[1, 3, H, W]`` normalised.
        Returns:
            ``[1, K, H, W]`` semantic scores.
        """
        return self._slide_outputs(rgb, thermal)["sem_seg"]

    @torch.no_grad()
    def _slide_outputs(self, rgb: torch.Tensor, thermal: torch.Tensor, queries: bool = False) -> Dict[str, torch.Tensor]:
        """Sliding-window inference: windows of ``slide_crop`` every ``slide_stride``; windows
        beyond a small image are zero-padded.

        Merging: semantic scores of overlapping windows are averaged per pixel. For panoptic and
        instance output the windows' predictions of the same query index are merged: its class
        logits are averaged over all windows, its mask logits over the windows covering each
        pixel; panoptic and instance inference then run once on these whole-image queries.

        Args:
            rgb, thermal: ``[1, 3, H, W]`` normalised.
            queries: also return the merged per-query predictions.
        Returns:
            ``sem_seg`` [1, K, H, W] and, with ``queries``, ``pred_logits`` [1, Q, K+1] and
            ``pred_masks`` [1, Q, H, W].
        """
        height, width = rgb.shape[-2:]
        (crop_h, crop_w), (stride_h, stride_w) = self.slide_crop, self.slide_stride
        rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
        cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
        boxes = []
        for r in range(rows):
            for c in range(cols):
                y1 = max(min(r * stride_h, height - crop_h), 0)
                x1 = max(min(c * stride_w, width - crop_w), 0)
                boxes.append((y1, x1, min(y1 + crop_h, height), min(x1 + crop_w, width)))

        def window(t, box):
            y1, x1, y2, x2 = box
            return F.pad(t[..., y1:y2, x1:x2], (0, crop_w - (x2 - x1), 0, crop_h - (y2 - y1)))

        scores = rgb.new_zeros((1, self.num_classes, height, width))
        count = rgb.new_zeros((1, 1, height, width))
        crops = self._whole_outputs(
            torch.cat([window(rgb, b) for b in boxes]), torch.cat([window(thermal, b) for b in boxes]), queries
        )
        for s, (y1, x1, y2, x2) in zip(crops["sem_seg"], boxes):
            scores[..., y1:y2, x1:x2] += s[:, : y2 - y1, : x2 - x1]
            count[..., y1:y2, x1:x2] += 1
        result = {"sem_seg": scores / count}
        if queries:
            masks = rgb.new_zeros((1, crops["pred_masks"].shape[1], height, width), dtype=torch.float32)
            for m, (y1, x1, y2, x2) in zip(crops["pred_masks"], boxes):
                masks[..., y1:y2, x1:x2] += m[:, : y2 - y1, : x2 - x1]
            result["pred_masks"] = masks / count
            result["pred_logits"] = crops["pred_logits"].mean(0, keepdim=True)
        return result
