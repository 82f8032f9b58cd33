"""Sliding-window inference on values: several overlapping windows, a stub model whose scores
depend on the pixel's content and on its position inside the window, results against a hand
computation (the windows are written out here, not derived from the code's formula)."""
import pytest
import torch
from torch import nn

from hapnet_d2.modeling.meta_arch.hapnet import HAPNet

NUM_CLASSES, NUM_QUERIES = 3, 2
CROP = 4


class _StubBackbone(nn.Module):
    size_divisibility = 1


def slide_model(height_stride, width_stride):
    model = HAPNet(
        backbone=_StubBackbone(), sem_seg_head=nn.Identity(), criterion=nn.Identity(), num_classes=NUM_CLASSES,
        pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0), thermal_mean=(0.0, 0.0, 0.0),
        thermal_std=(1.0, 1.0, 1.0), test_mode="slide", slide_crop=(CROP, CROP),
        slide_stride=(height_stride, width_stride), panoptic_on=False,
    ).eval()
    seen = []

    def whole_outputs(rgb, thermal, queries=False):
        """Stub: class k scores ``content + (k + 1) * (4 * row + col)`` with (row, col) the
        position inside the window; query masks likewise; class logits = the window's mean."""
        seen.append(rgb.shape)
        b, _, h, w = rgb.shape
        rows = torch.arange(h, dtype=torch.float32).view(h, 1)
        cols = torch.arange(w, dtype=torch.float32).view(1, w)
        local = CROP * rows + cols
        content = rgb[:, 0] + 1000 * thermal[:, 0]
        out = {"sem_seg": torch.stack([content + (k + 1) * local for k in range(NUM_CLASSES)], dim=1)}
        if queries:
            out["pred_masks"] = torch.stack([content - (q + 1) * local for q in range(NUM_QUERIES)], dim=1)
            out["pred_logits"] = content.mean((1, 2))[:, None, None] + torch.arange(
                NUM_QUERIES * (NUM_CLASSES + 1), dtype=torch.float32).view(1, NUM_QUERIES, -1)
        return out

    model._whole_outputs = whole_outputs
    return model, seen


def position_image(height, width):
    """RGB channel 0 = 10 * row + col (every pixel distinct); thermal channel 0 = 0.5 * row."""
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1)
    rgb = (10 * rows + cols).expand(3, height, width)[None].clone()
    thermal = (0.5 * rows).expand(3, height, width)[None].clone()
    return rgb, thermal


def hand_slide(rgb, thermal, windows):
    """Average over the windows (y1, x1) covering each pixel of the stub's per-window scores,
    windows zero-padded to CROP x CROP beyond the image."""
    _, _, height, width = rgb.shape
    scores = torch.zeros(NUM_CLASSES, height, width)
    masks = torch.zeros(NUM_QUERIES, height, width)
    count = torch.zeros(height, width)
    logits = torch.zeros(NUM_QUERIES, NUM_CLASSES + 1)
    for y1, x1 in windows:
        window_sum = 0.0
        for y in range(y1, y1 + CROP):
            for x in range(x1, x1 + CROP):
                if y < height and x < width:
                    content = float(rgb[0, 0, y, x] + 1000 * thermal[0, 0, y, x])
                    window_sum += content
                    local = CROP * (y - y1) + (x - x1)
                    for k in range(NUM_CLASSES):
                        scores[k, y, x] += content + (k + 1) * local
                    for q in range(NUM_QUERIES):
                        masks[q, y, x] += content - (q + 1) * local
                    count[y, x] += 1
        logits += window_sum / CROP ** 2 + torch.arange(NUM_QUERIES * (NUM_CLASSES + 1)).view(NUM_QUERIES, -1)
    return scores / count, masks / count, logits / len(windows), count


def test_windows_covering_pixels_once_twice_and_four_times():
    """6x6 image, 4x4 windows every 2: windows at (0,0), (0,2), (2,0), (2,2); corners are covered
    once, edges twice, the centre four times."""
    rgb, thermal = position_image(6, 6)
    model, seen = slide_model(2, 2)
    out = model.slide_inference(rgb, thermal)[0]
    windows = [(0, 0), (0, 2), (2, 0), (2, 2)]
    expected, _, _, count = hand_slide(rgb, thermal, windows)
    assert seen == [(4, 3, CROP, CROP)]  # all windows in one batch
    assert count[0, 0] == 1 and count[0, 2] == 2 and count[2, 0] == 2 and count[3, 3] == 4
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    # literal values: content at (row, col) is 10*row + col + 1000*0.5*row
    # (0, 0), one window at local (0, 0): class 0 scores 0
    assert out[0, 0, 0] == 0.0
    # (0, 2), windows (0,0) at local 2 and (0,2) at local 0: class 1 = 2 + 2*(2+0)/2 = 4
    assert out[1, 0, 2] == 4.0
    # (3, 3), local positions 15, 13, 7, 5 (mean 10): class 2 = 33 + 1500 + 3*10
    assert out[2, 3, 3] == 1563.0


def test_last_window_is_shifted_back_inside_the_image():
    """7x6 image, 4x4 windows every 2: rows start at 0, 2 and 3 (the last one shifted back so
    that it ends at the border), columns at 0 and 2; row 3 is covered three times per column."""
    rgb, thermal = position_image(7, 6)
    model, _ = slide_model(2, 2)
    out = model.slide_inference(rgb, thermal)[0]
    windows = [(y, x) for y in (0, 2, 3) for x in (0, 2)]
    expected, _, _, count = hand_slide(rgb, thermal, windows)
    assert count[3, 2] == 6 and count[6, 0] == 1
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_image_smaller_than_the_window_is_zero_padded():
    """3x6 image, 4x4 windows every 2: one row of windows, zero-padded below the image."""
    rgb, thermal = position_image(3, 6)
    model, seen = slide_model(2, 2)
    out = model.slide_inference(rgb, thermal)[0]
    expected, _, _, _ = hand_slide(rgb, thermal, [(0, 0), (0, 2)])
    assert seen == [(2, 3, CROP, CROP)]
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_query_outputs_are_merged_per_pixel_and_logits_over_windows():
    rgb, thermal = position_image(6, 6)
    model, _ = slide_model(2, 2)
    out = model._slide_outputs(rgb, thermal, queries=True)
    scores, masks, logits, _ = hand_slide(rgb, thermal, [(0, 0), (0, 2), (2, 0), (2, 2)])
    torch.testing.assert_close(out["sem_seg"][0], scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(out["pred_masks"][0], masks, atol=1e-4, rtol=0)
    torch.testing.assert_close(out["pred_logits"][0], logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "strides, rows, cols",
    [((2, 2), (0, 2), (0, 2, 3)), ((1, 3), (0, 1, 2), (0, 3))],
)
def test_model_call_in_slide_mode_returns_the_stitched_scores(strides, rows, cols):
    """Through ``model([inputs])`` on a 6x7 image: normalisation (here the identity) and output
    resizing (to the same size) leave the stitched scores as computed by hand."""
    height, width = 6, 7
    rgb, thermal = position_image(height, width)
    model, _ = slide_model(*strides)
    out = model([{"image": rgb[0], "thermal": thermal[0, :1], "height": height, "width": width}])[0]["sem_seg"]
    expected, _, _, _ = hand_slide(rgb, thermal, [(y, x) for y in rows for x in cols])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
