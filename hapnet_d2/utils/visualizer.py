"""Drawing RGB-thermal segmentation results: colour overlays, a class legend, side-by-side panels.

Images are numpy arrays in RGB channel order; label maps are ``HxW`` integer class ids (ids
outside the palette, e.g. 255 = ignore, are left uncoloured). Everything is drawn with OpenCV,
so a panel takes milliseconds and has a size that depends only on the image size and the class
list (video frames stay the same size).
"""

from typing import List, Optional, Sequence

import cv2
import numpy as np

__all__ = ["colorize_label", "overlay_label", "thermal_to_rgb", "draw_legend", "draw_panel"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT_COLOR = (0, 0, 0)
_BACKGROUND = 255
_SWATCH_BORDER = (128, 128, 128)


def _palette(colors: Sequence[Sequence[int]]) -> np.ndarray:
    """``[256, 3]`` uint8 lookup table: class colours first, black for every other id."""
    if len(colors) > 255:
        raise ValueError(f"at most 255 class colours are supported, got {len(colors)}")
    palette = np.zeros((256, 3), dtype=np.uint8)
    if len(colors):
        palette[: len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    return palette


def colorize_label(label: np.ndarray, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """Paint each class id with its colour.

    Args:
        label: ``HxW`` integer class ids (0..255).
        colors: ``K`` RGB colours, index = class id.

    Returns:
        np.ndarray: ``HxWx3`` uint8 RGB; ids >= K are black.
    """
    return _palette(colors)[np.asarray(label, dtype=np.uint8)]


def overlay_label(
    rgb: np.ndarray, label: np.ndarray, colors: Sequence[Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """Blend the class colours of a label map over an RGB image.

    Args:
        rgb: ``HxWx3`` uint8 RGB image.
        label: ``HxW`` integer class ids; ids >= ``len(colors)`` (e.g. 255) keep the image.
        colors: ``K`` RGB colours, index = class id.
        alpha: opacity of the class colours (0 = image only, 1 = colours only).

    Returns:
        np.ndarray: ``HxWx3`` uint8 RGB, ``(1 - alpha) * rgb + alpha * colour`` per pixel.
    """
    blended = cv2.addWeighted(rgb, 1.0 - alpha, colorize_label(label, colors), alpha, 0.0)
    coloured = (np.asarray(label) < len(colors))[:, :, None]
    return np.where(coloured, blended, rgb)


def thermal_to_rgb(thermal: np.ndarray) -> np.ndarray:
    """A thermal (or other X) image as a displayable RGB image.

    Args:
        thermal: ``HxW``, ``HxWx1`` or ``HxWx3`` on a 0-255 scale (any dtype).

    Returns:
        np.ndarray: ``HxWx3`` uint8 (grey for one channel), values clipped to 0..255.
    """
    image = np.clip(thermal, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image


def _font_scale(height: int) -> float:
    """Text size that stays readable from 120-pixel to 1000-pixel tall images."""
    return float(np.clip(height / 800.0, 0.35, 0.8))


def _text_height(scale: float) -> int:
    (_, height), baseline = cv2.getTextSize("Ag", _FONT, scale, 1)
    return height + baseline


def _titled(image: np.ndarray, title: str, scale: float) -> np.ndarray:
    """The image with a white title bar on top."""
    bar_height = _text_height(scale) + 8
    bar = np.full((bar_height, image.shape[1], 3), _BACKGROUND, dtype=np.uint8)
    cv2.putText(bar, title, (4, bar_height - 6), _FONT, scale, _TEXT_COLOR, 1, cv2.LINE_AA)
    return np.concatenate([bar, image], axis=0)


def draw_legend(
    width: int, class_names: Sequence[str], colors: Sequence[Sequence[int]], scale: float = 0.4
) -> np.ndarray:
    """A legend of colour swatches and class names, laid out in rows of equal-width cells.

    Args:
        width: legend width in pixels (usually the panel width).
        class_names: ``K`` class names.
        colors: ``K`` RGB colours, index = class id.
        scale: OpenCV font scale.

    Returns:
        np.ndarray: ``h x width x 3`` uint8 RGB on a white background.
    """
    if len(class_names) != len(colors):
        raise ValueError(f"{len(class_names)} class names but {len(colors)} colours")
    line = _text_height(scale)
    swatch, pad = line, 6
    widest = max((cv2.getTextSize(n, _FONT, scale, 1)[0][0] for n in class_names), default=0)
    cell_width = swatch + widest + 3 * pad
    columns = max(1, width // cell_width)
    rows = -(-len(class_names) // columns)
    row_height = line + pad
    legend = np.full((rows * row_height + pad, width, 3), _BACKGROUND, dtype=np.uint8)
    for i, (name, color) in enumerate(zip(class_names, colors)):
        x = pad + (i % columns) * cell_width
        y = pad + (i // columns) * row_height
        corner = (x + swatch - 1, y + swatch - 1)
        cv2.rectangle(legend, (x, y), corner, tuple(int(c) for c in color), cv2.FILLED)
        cv2.rectangle(legend, (x, y), corner, _SWATCH_BORDER, 1)
        baseline = y + swatch - cv2.getTextSize(name, _FONT, scale, 1)[1]
        cv2.putText(
            legend, name, (x + swatch + pad, baseline), _FONT, scale, _TEXT_COLOR, 1, cv2.LINE_AA
        )
    return legend


def draw_panel(
    rgb: np.ndarray,
    thermal: np.ndarray,
    prediction: np.ndarray,
    class_names: Sequence[str],
    colors: Sequence[Sequence[int]],
    *,
    ground_truth: Optional[np.ndarray] = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Side-by-side panel: RGB | thermal | prediction over RGB [| ground truth over RGB],
    titled, with a class legend underneath.

    Args:
        rgb: ``HxWx3`` uint8 RGB image.
        thermal: ``HxW``, ``HxWx1`` or ``HxWx3`` thermal (or X) image on a 0-255 scale.
        prediction: ``HxW`` integer class ids.
        class_names: ``K`` class names (legend).
        colors: ``K`` RGB colours, index = class id.
        ground_truth: optional ``HxW`` label map (255 = ignore, left uncoloured).
        alpha: opacity of the class colours over the RGB image.

    Returns:
        np.ndarray: ``(h_title + H + h_legend) x (3 or 4 * W) x 3`` uint8 RGB.
    """
    size = rgb.shape[:2]
    maps = {"thermal": thermal, "prediction": prediction, "ground truth": ground_truth}
    for what, image in maps.items():
        if image is not None and image.shape[:2] != size:
            raise ValueError(
                f"{what} is {image.shape[1]}x{image.shape[0]} (WxH) but the RGB image is "
                f"{size[1]}x{size[0]}"
            )
    tiles: List = [
        ("RGB", rgb),
        ("thermal", thermal_to_rgb(thermal)),
        ("prediction", overlay_label(rgb, prediction, colors, alpha)),
    ]
    if ground_truth is not None:
        tiles.append(("ground truth", overlay_label(rgb, ground_truth, colors, alpha)))
    scale = _font_scale(size[0])
    row = np.concatenate([_titled(image, title, scale) for title, image in tiles], axis=1)
    return np.concatenate([row, draw_legend(row.shape[1], class_names, colors, scale)], axis=0)


def _display_metadata(class_names: Sequence[str], colors: Sequence[Sequence[int]]):
    """Metadata for Detectron2's ``Visualizer`` in which thing and stuff ids are the same
    contiguous class ids (HAPNet's panoptic and instance outputs use one id space)."""
    from detectron2.data.catalog import Metadata

    names, cols = list(class_names), [tuple(int(v) for v in c) for c in colors]
    return Metadata(name="hapnet_display", thing_classes=names, stuff_classes=names,
                    thing_colors=cols, stuff_colors=cols)


def draw_panoptic(image: np.ndarray, panoptic_ids: np.ndarray, segments_info, class_names, colors,
                  alpha: float = 0.5) -> np.ndarray:
    """Panoptic segments over an image with Detectron2's ``Visualizer``: stuff in its class
    colour, each thing instance in a shade of its class colour with its outline and name.

    Args:
        image: ``HxWx3`` uint8 RGB.
        panoptic_ids: ``HxW`` int segment ids (0 = void); segments_info: ``{"id", "isthing",
            "category_id"}`` with contiguous class ids.

    Returns:
        np.ndarray: ``HxWx3`` uint8 RGB.
    """
    import torch
    from detectron2.utils.visualizer import ColorMode, Visualizer

    vis = Visualizer(image, _display_metadata(class_names, colors), instance_mode=ColorMode.IMAGE)
    vis._default_font_size = max(6, image.shape[0] // 40)
    out = vis.draw_panoptic_seg(torch.as_tensor(np.asarray(panoptic_ids)), list(segments_info), alpha=alpha)
    return out.get_image()


def draw_instances(image: np.ndarray, instances, class_names, colors, score_threshold: float = 0.5) -> np.ndarray:
    """Instance predictions scoring at least ``score_threshold`` (outlined masks, class and
    score) over an image with Detectron2's ``Visualizer``.

    Args:
        image: ``HxWx3`` uint8 RGB; instances: Detectron2 ``Instances`` (``pred_masks``,
            ``pred_boxes``, ``scores``, ``pred_classes``) of the image's size.
    """
    from detectron2.utils.visualizer import ColorMode, Visualizer

    vis = Visualizer(image, _display_metadata(class_names, colors), instance_mode=ColorMode.IMAGE)
    vis._default_font_size = max(6, image.shape[0] // 40)
    instances = instances.to("cpu")
    instances = instances[instances.scores >= score_threshold]
    return vis.draw_instance_predictions(instances).get_image()


def draw_panoptic_panel(rgb, thermal, panoptic, instances, class_names, colors, alpha: float = 0.5) -> np.ndarray:
    """Rows of titled tiles: panoptic over RGB | panoptic over thermal, and (if given)
    instances over RGB | instances over thermal.

    Args:
        rgb: ``HxWx3`` uint8; thermal: ``HxW[x1|x3]`` 0-255; panoptic: ``(ids [H, W],
            segments_info)``; instances: Detectron2 ``Instances`` or None.

    Returns:
        np.ndarray: uint8 RGB, ``2 * W`` wide.
    """
    scale = _font_scale(rgb.shape[0])
    grey = thermal_to_rgb(thermal)
    ids, segments = panoptic
    rows = [[("panoptic on RGB", draw_panoptic(rgb, ids, segments, class_names, colors, alpha)),
             ("panoptic on thermal", draw_panoptic(grey, ids, segments, class_names, colors, alpha))]]
    if instances is not None:
        rows.append([("instances on RGB", draw_instances(rgb, instances, class_names, colors)),
                     ("instances on thermal", draw_instances(grey, instances, class_names, colors))])
    return np.concatenate(
        [np.concatenate([_titled(image, title, scale) for title, image in row], axis=1) for row in rows], axis=0
    )


def stack_panels(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """``top`` above ``bottom``, the narrower one padded on the right with the background."""
    width = max(top.shape[1], bottom.shape[1])

    def pad(image):
        extra = np.full((image.shape[0], width - image.shape[1], 3), _BACKGROUND, dtype=np.uint8)
        return np.concatenate([image, extra], axis=1)

    return np.concatenate([pad(top), pad(bottom)], axis=0)
