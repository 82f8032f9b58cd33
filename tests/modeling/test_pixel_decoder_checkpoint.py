"""Checkpoints saved before the pixel decoder's input projections had a bias still load."""
import re

import torch
from detectron2.modeling import build_model

from conftest import rgbt_pair
from hapnet_d2.checkpoint import HAPNetCheckpointer, safe_torch_load
from test_pixel_decoder import _features, _tiny_decoder

PREFIX = "sem_seg_head.pixel_decoder."


def _as_version_1(state, prefix=""):
    """What a version-1 (bias-free) decoder saved: no input_proj biases, version 1 metadata."""
    conv_bias = re.compile(re.escape(prefix) + r"input_proj\.\d+\.bias$")
    old = type(state)((k, v) for k, v in state.items() if not conv_bias.match(k))
    old._metadata = {k: dict(v) for k, v in state._metadata.items()}
    old._metadata[prefix.rstrip(".")]["version"] = 1
    return old


def test_version_1_state_dict_loads_with_zero_biases_and_same_outputs():
    torch.manual_seed(0)
    source = _tiny_decoder().eval()
    with torch.no_grad():
        for proj in source.input_proj:
            proj.bias.zero_()  # what the bias-free model computed
    old_state = _as_version_1(source.state_dict())
    assert len(old_state) == len(source.state_dict()) - 3 and "input_proj.0.norm.bias" in old_state
    target = _tiny_decoder().eval()
    with torch.no_grad():
        for proj in target.input_proj:
            proj.bias.fill_(3.0)
    result = target.load_state_dict(old_state, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert all(torch.equal(p.bias, torch.zeros(32)) for p in target.input_proj)
    features = _features(1, 16, 64, 64)
    with torch.no_grad():
        expected, target_out = source.forward_features(features), target.forward_features(features)
    torch.testing.assert_close(target_out[0], expected[0], rtol=0, atol=0)


def test_version_2_state_dict_without_bias_reports_it_missing():
    state = _tiny_decoder().state_dict()
    del state["input_proj.0.bias"]
    result = _tiny_decoder().load_state_dict(state, strict=False)
    assert result.missing_keys == ["input_proj.0.bias"]


def test_old_checkpoint_file_loads_through_the_checkpointer(tmp_path, tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg).eval()
    state = model.state_dict()
    assert state._metadata[PREFIX.rstrip(".")]["version"] == 2
    torch.save({"model": _as_version_1(state, PREFIX), "iteration": 7}, tmp_path / "old.pth")
    # the version survives the weights-only load
    reloaded = safe_torch_load(str(tmp_path / "old.pth"))["model"]
    assert reloaded._metadata[PREFIX.rstrip(".")]["version"] == 1
    fresh = build_model(tiny_cfg).eval()
    incompatible = HAPNetCheckpointer(fresh)._load_model(safe_torch_load(str(tmp_path / "old.pth")))
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    for proj in fresh.sem_seg_head.pixel_decoder.input_proj:
        assert torch.equal(proj.bias, torch.zeros_like(proj.bias))
    x = rgbt_pair(64, 64)
    del x["sem_seg"]
    with torch.no_grad():
        assert torch.isfinite(fresh([x])[0]["sem_seg"]).all()
