"""The converted CPU inference paths (hapnet_d2.utils.cpu_inference): float32 unchanged, bf16
with float32 islands, int8 dynamic quantization of the Linear layers."""
import collections

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from conftest import MFNET_SAMPLE, requires_mfnet_sample, rgbt_pair
from hapnet_d2.checkpoint import HAPNetCheckpointer
from hapnet_d2.modeling.backbone.timm_vit import TimmViT
from hapnet_d2.utils.cpu_inference import (
    fold_qkv_bias,
    float32_island_names,
    prepare_for_cpu_inference,
    retain_freed_memory,
)

quantized_linear = torch.ao.nn.quantized.dynamic.Linear


@pytest.fixture
def tiny_whole(tiny_cfg):
    """A function building the tiny model in whole-image mode with the same random weights,
    non-trivial layer scales, GLCA gammas and relative-position tables."""
    tiny_cfg.TEST.MODE = "whole"
    torch.manual_seed(0)
    reference = build_model(tiny_cfg)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.endswith(("gamma", "gamma_1", "gamma_2")) or "relative_position_bias_table" in name:
                p.normal_(0.0, 0.5)
    state = reference.state_dict()

    def make():
        model = build_model(tiny_cfg).eval()
        model.load_state_dict(state)
        return model

    return make


def _input(height=64, width=96):
    x = rgbt_pair(height, width)
    del x["sem_seg"]
    return [x]


def _scores(model, inputs):
    with torch.no_grad():
        return model(inputs)[0]["sem_seg"]


def _rel_l2(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_fold_qkv_bias_gives_bit_identical_blocks():
    torch.manual_seed(0)
    vit = TimmViT(name="beitv2_base_patch16_224", img_size=(64, 64), stages=[[0, 0], [1, 1], [2, 2], [3, 3]],
                  extra_kwargs={"embed_dim": 48, "depth": 4, "num_heads": 3}).eval()
    attn = vit.vfm.blocks[0].attn
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
        x = torch.randn(2, 17, 48)
        before = vit.vfm.blocks[0](x)
        expected_bias = torch.cat((attn.q_bias, torch.zeros(48), attn.v_bias))
        assert fold_qkv_bias(vit) == 4
        assert attn.q_bias is None and attn.v_bias is None
        assert torch.equal(attn.qkv.bias, expected_bias)
        assert torch.equal(vit.vfm.blocks[0](x), before)
    assert fold_qkv_bias(vit) == 0  # nothing left to fold


def test_fp32_conversion_keeps_the_scores_bit_identical(tiny_whole):
    inputs = _input()
    reference = _scores(tiny_whole(), inputs)
    model = prepare_for_cpu_inference(tiny_whole(), "fp32")
    assert model.cpu_inference_precision == "fp32"
    assert torch.equal(_scores(model, inputs), reference)


def test_islands_are_the_deformable_projections_and_the_score_heads(tiny_whole):
    names = float32_island_names(tiny_whole())
    assert "backbone.glca.0.attn.sampling_offsets" in names
    assert "backbone.ccg.3.attn.attention_weights" in names
    assert "sem_seg_head.pixel_decoder.encoder.layers.0.self_attn.sampling_offsets" in names
    assert {"sem_seg_head.predictor.decoder_norm", "sem_seg_head.predictor.class_embed",
            "sem_seg_head.predictor.mask_embed"} <= set(names)
    assert not any("value_proj" in n or "output_proj" in n for n in names)


def test_bf16_weights_islands_and_scores(tiny_whole):
    inputs = _input()
    reference = _scores(tiny_whole(), inputs)
    model = prepare_for_cpu_inference(tiny_whole(), "bf16")
    modules = dict(model.named_modules())
    assert modules["backbone.vfm.vfm.blocks.0.attn.qkv"].weight.dtype == torch.bfloat16
    assert modules["backbone.glca.0.attn.value_proj"].weight.dtype == torch.bfloat16
    for name in float32_island_names(model):
        assert all(p.dtype == torch.float32 for p in modules[name].parameters()), name
    for m in model.modules():
        if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm2d)):
            assert m.weight.dtype == torch.float32
    stem = modules["backbone.cspd.convnext.stem.0"]
    assert stem.weight.is_contiguous(memory_format=torch.channels_last)
    scores = _scores(model, inputs)
    assert scores.dtype == torch.float32 and scores.shape == reference.shape
    assert _rel_l2(scores, reference) < 2e-2
    assert (scores.argmax(0) == reference.argmax(0)).float().mean() >= 0.97


class _MixedDtypeOps(TorchDispatchMode):
    """Counts the ops whose (non-scalar) floating inputs have more than one dtype."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat, _ = tree_flatten((args, kwargs or {}))
        dtypes = {t.dtype for t in flat if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() > 0}
        if len(dtypes) > 1:
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_bf16_path_mixes_dtypes_only_in_the_norms(tiny_whole):
    """No cast-and-compute element-wise op on the hot path: the only ops seeing bf16 and float32
    inputs together are the norms (bf16 activations, float32 parameters, float32 math)."""
    model = prepare_for_cpu_inference(tiny_whole(), "bf16")
    with torch.no_grad(), _MixedDtypeOps() as mode:
        model(_input(64, 64))
    assert set(mode.ops) <= {"native_layer_norm", "native_group_norm", "native_batch_norm"}
    assert mode.ops["native_layer_norm"] > 0


def test_int8_quantizes_linear_layers_outside_the_islands(tiny_whole):
    inputs = _input()
    reference = _scores(tiny_whole(), inputs)
    model = prepare_for_cpu_inference(tiny_whole(), "int8")
    modules = dict(model.named_modules())
    assert isinstance(modules["backbone.vfm.vfm.blocks.0.attn.qkv"], quantized_linear)
    assert isinstance(modules["backbone.vfm.vfm.blocks.3.mlp.fc2"], quantized_linear)
    assert isinstance(modules["backbone.ccg.0.attn.value_proj"], quantized_linear)
    for name in float32_island_names(model):
        assert not any(isinstance(m, quantized_linear) for m in modules[name].modules()), name
    scores = _scores(model, inputs)
    assert scores.dtype == torch.float32
    assert _rel_l2(scores, reference) < 5e-2
    assert (scores.argmax(0) == reference.argmax(0)).float().mean() >= 0.95


def test_bad_precision_and_second_conversion_are_refused(tiny_whole):
    model = tiny_whole()
    with pytest.raises(ValueError, match="precision must be one of"):
        prepare_for_cpu_inference(model, "fp16")
    prepare_for_cpu_inference(model, "int8")
    with pytest.raises(ValueError, match="already converted for int8"):
        prepare_for_cpu_inference(model, "bf16")


def test_retain_freed_memory_applies_on_glibc():
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert retain_freed_memory() is True


def _mfnet_frame():
    arr = np.asarray(Image.open(MFNET_SAMPLE))
    chw = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    return [{"image": chw[:3], "thermal": chw[3:].float()}]


@pytest.mark.slow
@pytest.mark.parametrize("precision, min_agreement", [("int8", 0.99), ("bf16", 0.99)])
@requires_mfnet_sample
def test_trained_tiny_agrees_with_fp32_on_the_real_mfnet_frame(trained_tiny, precision, min_agreement):
    """Acceptance of the converted paths: >= 99% of the pixels of the real MFNet frame get the
    fp32 class (bf16 is emulated and slow on CPUs without bf16 units, but still correct)."""
    def load():
        cfg = trained_tiny["cfg"](["TEST.MODE", "whole"])
        model = build_model(cfg).eval()
        HAPNetCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        return model

    inputs = _mfnet_frame()
    reference = _scores(load(), inputs)
    assert len(reference.argmax(0).unique()) > 1  # a trained model, non-trivial predictions
    scores = _scores(prepare_for_cpu_inference(load(), precision), inputs)
    agreement = (scores.argmax(0) == reference.argmax(0)).float().mean().item()
    print(f"{precision}: argmax agreement {agreement:.4f}, relative L2 {_rel_l2(scores, reference):.2e}")
    assert agreement >= min_agreement
