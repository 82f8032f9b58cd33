"""Inference on RGB-thermal pairs and paired videos for the demo.

:class:`RGBTPredictor` is Detectron2's ``DefaultPredictor`` for two modalities;
:class:`RGBTVisualizationDemo` adds the panel drawing (``hapnet_d2.utils.visualizer``) and
:class:`PairedVideoReader` reads an RGB and a thermal video in lockstep.
"""

import logging
import os
from typing import Iterator, Tuple

import cv2
import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

import hapnet_d2  # noqa: F401  registers the model and the datasets
from hapnet_d2.checkpoint import HAPNetCheckpointer
from hapnet_d2.data import RGBTDataError, ResizeToBaseScale
from hapnet_d2.test_time_augmentation import SemanticSegmentorWithTTA
from hapnet_d2.utils.visualizer import draw_panel, draw_panoptic_panel, stack_panels

__all__ = ["RGBTPredictor", "RGBTVisualizationDemo", "PairedVideoReader"]

logger = logging.getLogger(__name__)


def _check_pair(rgb: np.ndarray, thermal: np.ndarray) -> None:
    """Raise ValueError unless ``rgb`` is uint8 HxWx3 and ``thermal`` HxW[x1|x3] of its size."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"RGB must be a uint8 HxWx3 array, got {rgb.dtype} {rgb.shape}")
    if not (thermal.ndim == 2 or (thermal.ndim == 3 and thermal.shape[2] in (1, 3))):
        raise ValueError(f"thermal must be HxW, HxWx1 or HxWx3, got shape {thermal.shape}")
    if thermal.shape[:2] != rgb.shape[:2]:
        raise ValueError(
            f"thermal is {thermal.shape[1]}x{thermal.shape[0]} (WxH) but RGB is "
            f"{rgb.shape[1]}x{rgb.shape[0]}"
        )


class RGBTPredictor:
    """Build HAPNet from a config, load ``MODEL.WEIGHTS`` and segment single RGB-T pairs.

    As Detectron2's ``DefaultPredictor``: the model is in eval mode, test-time augmentation is
    applied when ``TEST.AUG.ENABLED``, and the RGB image is given in RGB order whatever
    ``INPUT.FORMAT`` the model expects. Pairs are resized to the base scale ``INPUT.BASE_SIZE`` (as
    the test mapper does) and the scores returned at the input size; the model's ``TEST.MODE``
    decides between whole-image and sliding-window inference.
    """

    def __init__(self, cfg):
        """
        Args:
            cfg (CfgNode): a config built by ``add_hapnet_config`` + YAML + opts.
        """
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        weights = cfg.MODEL.WEIGHTS
        if weights:
            if not PathManager.isfile(PathManager.get_local_path(weights)):
                raise FileNotFoundError(f"{weights}: MODEL.WEIGHTS checkpoint does not exist")
            # refuses a file that leaves much of the model unloaded (MODEL.ALLOW_PARTIAL_WEIGHTS)
            HAPNetCheckpointer.for_inference(self.model, cfg).load(weights)
        else:
            logger.warning("MODEL.WEIGHTS is empty: predicting with randomly initialised weights.")
        if cfg.TEST.AUG.ENABLED:
            self.model = SemanticSegmentorWithTTA(cfg, self.model)
        self.input_format = cfg.INPUT.FORMAT
        self.resize = ResizeToBaseScale(cfg.INPUT.BASE_SIZE)

    def __call__(self, rgb: np.ndarray, thermal: np.ndarray) -> torch.Tensor:
        """
        Args: as :meth:`predict`.

        Returns:
            torch.Tensor: ``[K, H, W]`` float class scores on the CPU.
        """
        return self.predict(rgb, thermal)["sem_seg"]

    def predict(self, rgb: np.ndarray, thermal: np.ndarray) -> dict:
        """
        Args:
            rgb: ``HxWx3`` uint8 image in RGB order.
            thermal: ``HxW``, ``HxWx1`` or ``HxWx3`` (X modality such as HHA) on a 0-255 scale.

        Returns:
            dict: ``"sem_seg"`` ``[K, H, W]`` float class scores on the CPU, and, when the config
            turns them on (``MODEL.MASK_FORMER.TEST.PANOPTIC_ON`` / ``INSTANCE_ON``),
            ``"panoptic_seg"`` ``(ids [H, W] int32, segments_info)`` and ``"instances"``.
        """
        _check_pair(rgb, thermal)
        height, width = rgb.shape[:2]
        image = rgb[:, :, ::-1] if self.input_format == "BGR" else rgb
        thermal = thermal.reshape(height, width, -1).astype(np.float32, copy=False)
        resize = self.resize.get_transform(image)
        image, thermal = resize.apply_image(image), resize.apply_image(thermal)
        inputs = {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "thermal": torch.as_tensor(np.ascontiguousarray(thermal.transpose(2, 0, 1))),
            "height": height,
            "width": width,
        }
        with torch.inference_mode():
            outputs = self.model([inputs])[0]
        result = {"sem_seg": outputs["sem_seg"].float().cpu()}
        if "panoptic_seg" in outputs:
            ids, segments = outputs["panoptic_seg"]
            result["panoptic_seg"] = (ids.cpu(), segments)
        if "instances" in outputs:
            result["instances"] = outputs["instances"].to("cpu")
        return result


class RGBTVisualizationDemo:
    """Predict RGB-T pairs and draw RGB | thermal | prediction panels with a class legend."""

    def __init__(self, cfg, metadata, alpha: float = 0.5):
        """
        Args:
            cfg (CfgNode): model config (see :class:`RGBTPredictor`).
            metadata (Metadata): dataset metadata with ``stuff_classes`` and ``stuff_colors``,
                one per class of the model (``MODEL.SEM_SEG_HEAD.NUM_CLASSES``).
            alpha: opacity of the class colours over the RGB image.
        """
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        self.class_names = list(metadata.stuff_classes)
        self.colors = [list(c) for c in metadata.stuff_colors]
        if len(self.class_names) != num_classes:
            raise ValueError(
                f"dataset {metadata.name} has {len(self.class_names)} classes but the model "
                f"predicts {num_classes} (MODEL.SEM_SEG_HEAD.NUM_CLASSES)"
            )
        self.alpha = alpha
        self.metadata = metadata
        self.predictor = RGBTPredictor(cfg)

    def run_on_pair(self, rgb: np.ndarray, thermal: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """
        Args:
            rgb: ``HxWx3`` uint8 RGB image.
            thermal: ``HxW`` or ``HxWx3`` on a 0-255 scale.

        Returns:
            tuple: ``label`` (``HxW`` uint8 class ids) and ``panel`` (uint8 RGB image, see
            :func:`hapnet_d2.utils.visualizer.draw_panel`).
        """
        result = self.predict_and_draw(rgb, thermal)
        return result["label"], result["panel"]

    def predict_and_draw(self, rgb: np.ndarray, thermal: np.ndarray) -> dict:
        """
        Args: as :meth:`run_on_pair`.

        Returns:
            dict: ``label`` and ``panel`` as :meth:`run_on_pair` (the panel also shows panoptic
            and instance output, on RGB and on thermal, when the model gives them), and
            ``panoptic`` (``(ids HxW int32 array, segments_info)`` or None).
        """
        outputs = self.predictor.predict(rgb, thermal)
        label = outputs["sem_seg"].argmax(dim=0).to(torch.uint8).numpy()
        panel = draw_panel(rgb, thermal, label, self.class_names, self.colors, alpha=self.alpha)
        panoptic = None
        if "panoptic_seg" in outputs:
            ids, segments = outputs["panoptic_seg"]
            panoptic = (ids.numpy().astype(np.int32), [dict(s) for s in segments])
            below = draw_panoptic_panel(rgb, thermal, panoptic, outputs.get("instances"), self.class_names,
                                        self.colors, alpha=self.alpha)
            panel = stack_panels(panel, below)
        return {"label": label, "panel": panel, "panoptic": panoptic}

    def run_on_video(self, video: "PairedVideoReader") -> Iterator[np.ndarray]:
        """
        Args:
            video: the paired RGB and thermal videos.

        Yields:
            np.ndarray: one uint8 RGB panel per frame pair.
        """
        for rgb, thermal in video:
            yield self.run_on_pair(rgb, thermal)[1]


def _open_video(path: str) -> cv2.VideoCapture:
    if not os.path.isfile(path):
        raise RGBTDataError(path, "file does not exist")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise RGBTDataError(path, "not a readable video (unknown format or corrupt)")
    return capture


class PairedVideoReader:
    """Read an RGB and a thermal video frame by frame in lockstep.

    Both videos must have the same frame size and number of frames; a mismatch found in the
    headers is reported when opening, one found while reading (a video ending early) when it
    happens. Every error is an :class:`RGBTDataError` naming the offending file.
    """

    def __init__(self, rgb_path: str, thermal_path: str, thermal_channels: int = 1):
        """
        Args:
            rgb_path: RGB video (any format OpenCV reads).
            thermal_path: thermal video with the same frame size and count; its frames are
                converted to one grey channel (``thermal_channels=1``) or kept as 3 channels.
            thermal_channels: 1 or 3.
        """
        if thermal_channels not in (1, 3):
            raise ValueError(f"thermal_channels must be 1 or 3, got {thermal_channels}")
        self.rgb_path, self.thermal_path = rgb_path, thermal_path
        self.thermal_channels = thermal_channels
        self._rgb = _open_video(rgb_path)
        try:
            self._thermal = _open_video(thermal_path)
        except RGBTDataError:
            self._rgb.release()
            raise
        rgb_size, thermal_size = self._frame_size(self._rgb), self._frame_size(self._thermal)
        if rgb_size != thermal_size:
            self.release()
            raise RGBTDataError(
                thermal_path,
                f"frame size {thermal_size[0]}x{thermal_size[1]} (WxH) differs from the RGB "
                f"video {rgb_path} ({rgb_size[0]}x{rgb_size[1]})",
            )
        self.width, self.height = rgb_size
        rgb_count = int(self._rgb.get(cv2.CAP_PROP_FRAME_COUNT))
        thermal_count = int(self._thermal.get(cv2.CAP_PROP_FRAME_COUNT))
        if rgb_count > 0 and thermal_count > 0 and rgb_count != thermal_count:
            self.release()
            raise RGBTDataError(
                thermal_path,
                f"{thermal_count} frames but the RGB video {rgb_path} has {rgb_count}",
            )
        self.num_frames = rgb_count if rgb_count > 0 else None
        self.fps = self._rgb.get(cv2.CAP_PROP_FPS) or 30.0

    @staticmethod
    def _frame_size(capture: cv2.VideoCapture) -> Tuple[int, int]:
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        return width, int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """
        Yields:
            tuple: ``rgb`` (``HxWx3`` uint8 RGB) and ``thermal`` (``HxW`` or ``HxWx3`` float32
            on a 0-255 scale) of each frame pair.
        """
        index = 0
        while True:
            rgb_ok, rgb = self._rgb.read()
            thermal_ok, thermal = self._thermal.read()
            if rgb_ok != thermal_ok:
                shorter = self.thermal_path if rgb_ok else self.rgb_path
                raise RGBTDataError(
                    shorter, f"ends after {index} frames, before the other video of the pair"
                )
            if not rgb_ok:
                return
            conversion = cv2.COLOR_BGR2GRAY if self.thermal_channels == 1 else cv2.COLOR_BGR2RGB
            yield (
                cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB),
                cv2.cvtColor(thermal, conversion).astype(np.float32),
            )
            index += 1

    def release(self) -> None:
        """Close both videos."""
        self._rgb.release()
        self._thermal.release()

    def __enter__(self) -> "PairedVideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
