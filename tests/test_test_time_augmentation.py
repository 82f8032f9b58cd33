"""Multi-scale + flip test-time augmentation."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from torch import nn

from hapnet_d2.test_time_augmentation import SemanticSegmentorWithTTA


class RecordingSegmentor(nn.Module):
    """Scores = the first two image channels resized to the output size (flip-equivariant)."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.batch_sizes = []

    def forward(self, batched_inputs):
        self.batch_sizes.append(len(batched_inputs))
        outputs = []
        for x in batched_inputs:
            self.calls.append(x)
            image = x["image"][None, :2].float()
            scores = F.interpolate(image, size=(x["height"], x["width"]), mode="bilinear")
            outputs.append({"sem_seg": scores[0]})
        return outputs


def _inputs(height=12, width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8),
        "thermal": torch.rand(3, height, width, generator=g) * 255,
        "height": 24,
        "width": 32,
    }


def test_every_scale_and_flip_is_run_and_averaged():
    model = RecordingSegmentor()
    inputs = _inputs()
    (output,) = SemanticSegmentorWithTTA(model=model, scales=[1.0, 1.5], flip=True)([inputs])

    sizes = [tuple(call["image"].shape[-2:]) for call in model.calls]
    assert sizes == [(12, 16), (12, 16), (18, 24), (18, 24)]
    assert model.batch_sizes == [2, 2]  # one call per scale: the image and its flipped copy
    assert all((call["height"], call["width"]) == (24, 32) for call in model.calls)
    for plain, flipped in (model.calls[0:2], model.calls[2:4]):
        assert torch.equal(flipped["image"], plain["image"].flip(-1))
        assert torch.equal(flipped["thermal"], plain["thermal"].flip(-1))
    assert torch.equal(model.calls[0]["image"], inputs["image"])
    for key in ("image", "thermal"):
        reference = F.interpolate(inputs[key][None].float(), size=(18, 24), mode="bilinear")[0]
        assert model.calls[2][key].dtype == inputs[key].dtype
        assert (model.calls[2][key].float() - reference).abs().max() <= 2.0

    scores = [model([call])[0]["sem_seg"] for call in model.calls[:4]]
    expected = (scores[0] + scores[1].flip(-1) + scores[2] + scores[3].flip(-1)) / 4
    assert output["sem_seg"].shape == (2, 24, 32)
    assert torch.allclose(output["sem_seg"], expected)


def test_flip_is_undone_before_averaging():
    inputs = _inputs()
    plain = SemanticSegmentorWithTTA(model=RecordingSegmentor(), scales=[1.0], flip=False)
    flipped = SemanticSegmentorWithTTA(model=RecordingSegmentor(), scales=[1.0], flip=True)
    assert torch.allclose(flipped([inputs])[0]["sem_seg"], plain([inputs])[0]["sem_seg"])


def test_invalid_scales_are_a_clear_error():
    with pytest.raises(ValueError, match="TEST.AUG.SCALES"):
        SemanticSegmentorWithTTA(model=RecordingSegmentor(), scales=[1.0, 0.0], flip=False)


def test_tiny_hapnet_with_tta_from_config(tiny_cfg):
    torch.manual_seed(0)
    tiny_cfg.TEST.AUG.SCALES = [1.0, 1.25]
    tiny_cfg.TEST.AUG.FLIP = True
    model = build_model(tiny_cfg).eval()
    tta = SemanticSegmentorWithTTA(tiny_cfg, model)
    assert tta.scales == [1.0, 1.25] and tta.flip
    inputs = _inputs(64, 64)
    (output,) = tta([inputs])
    assert output["sem_seg"].shape == (tiny_cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 24, 32)
    assert torch.isfinite(output["sem_seg"]).all()


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_hapnet_batched_inference_matches_one_by_one(tiny_cfg, mode):
    """Inputs of one size run as one batch (whole mode), mixed sizes and slide windows apart:
    each result equals the image run alone."""
    torch.manual_seed(0)
    tiny_cfg.TEST.MODE = mode
    model = build_model(tiny_cfg).eval()
    inputs = [_inputs(64, 64, seed=0), _inputs(64, 64, seed=1), _inputs(64, 96, seed=2)]
    with torch.no_grad():
        together = model(inputs)
        alone = [model([x])[0] for x in inputs]
    for a, b in zip(together, alone):
        assert a["sem_seg"].shape == (tiny_cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 24, 32)
        torch.testing.assert_close(a["sem_seg"], b["sem_seg"], atol=1e-4, rtol=1e-4)
