"""Panoptic RGB-T dataset dict -> RGB, thermal, label and per-segment instance tensors."""

import numpy as np
import torch
from detectron2.structures import BitMasks, Instances

from ..io import RGBTDataError
from ..panoptic_format import VOID, id2rgb, read_panoptic_png, rgb2id, semantic_from_panoptic
from .rgbt_semantic_dataset_mapper import RGBTSemanticDatasetMapper

__all__ = ["RGBTPanopticDatasetMapper"]


class RGBTPanopticDatasetMapper(RGBTSemanticDatasetMapper):
    """:class:`RGBTSemanticDatasetMapper` plus the panoptic ground truth, for training
    Mask2Former with one mask per segment.

    Training: the panoptic id map (``pan_seg_file_name``) goes through the very geometric
    augmentation of RGB, thermal and label (nearest-neighbour resize, the same crop and flip),
    and is padded with void. The output adds ``"instances"``: :class:`Instances` with
    ``gt_classes`` [N] int64 (contiguous ids) and ``gt_masks`` :class:`BitMasks` [N, H, W], one
    per non-crowd segment still visible after cropping. ``"sem_seg"`` is read from the label
    file, or derived from the panoptic PNG when the dict has none (void -> 255).
    Test: exactly the semantic mapper (the evaluators read the ground truth themselves).
    """

    def read(self, dataset_dict):
        rgb, thermal, label = super().read(dataset_dict)
        if not self.is_train:
            return rgb, thermal, label
        path = dataset_dict.get("pan_seg_file_name")
        if path is None or "segments_info" not in dataset_dict:
            raise RGBTDataError(
                dataset_dict["file_name"], "panoptic training needs 'pan_seg_file_name' and "
                "'segments_info' (register the split as a panoptic dataset)"
            )
        ids = read_panoptic_png(path)
        if ids.shape != rgb.shape[:2]:
            raise RGBTDataError(
                path, f"size {ids.shape[1]}x{ids.shape[0]} (WxH) differs from the image "
                f"{dataset_dict['file_name']} ({rgb.shape[1]}x{rgb.shape[0]})"
            )
        if label is None:
            label = semantic_from_panoptic(ids, dataset_dict["segments_info"])
        dataset_dict["_pan_ids"] = ids
        return rgb, thermal, label

    def transform_annotations(self, dataset_dict, transforms):
        if "_pan_ids" in dataset_dict:
            # transformed in its RGB encoding: a uint8 array takes the very nearest-neighbour path
            # of the uint8 label map, so segments and labels stay aligned pixel for pixel
            rgb = transforms.apply_segmentation(id2rgb(dataset_dict["_pan_ids"]))
            dataset_dict["_pan_ids"] = rgb2id(rgb)

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict (dict): one dict of a registered panoptic RGB-T dataset.

        Returns:
            dict: as :class:`RGBTSemanticDatasetMapper`, plus ``"instances"`` in training.
        """
        out = super().__call__(dataset_dict)
        ids = out.pop("_pan_ids", None)
        if ids is None:
            return out
        if self.pad is not None:
            ids = self.pad(ids, VOID)
        classes, masks = [], []
        for seg in out["segments_info"]:
            if seg.get("iscrowd", 0):
                continue
            mask = ids == seg["id"]
            if mask.any():
                classes.append(seg["category_id"])
                masks.append(mask)
        height, width = ids.shape
        instances = Instances((height, width))
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        instances.gt_masks = BitMasks(
            torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, height, width), dtype=torch.bool)
        )
        out["instances"] = instances
        return out
