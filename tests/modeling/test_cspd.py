"""The CSPD with the encoders of the paper's Table 6: ConvNeXt (unchanged), ResNet, Swin."""
import pytest
import timm
import torch
from detectron2.modeling import build_model

from conftest import rgbt_pair
from hapnet_d2.modeling.backbone import CSPD
from hapnet_d2.modeling.backbone.cspd import cspd_layer_id
from hapnet_d2.modeling.backbone.pretrained import load_cspd_weights
from hapnet_d2.solver import build_optimizer, get_layer_id

SWIN = "swin_tiny_patch4_window7_224"
# name -> (CSPD kwargs, channels of the 4 levels)
ENCODERS = {
    "resnet18": ({}, [64, 128, 256, 512]),
    SWIN: ({"img_size": (64, 64)}, [96, 192, 384, 768]),
}


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "separate"])
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_gives_four_levels_summed_over_modalities(name, shared):
    kwargs, channels = ENCODERS[name]
    torch.manual_seed(0)
    cspd = CSPD(name=name, modalities=["rgb", "thermal"], shared_weights=shared, **kwargs).eval()
    assert cspd.channels == channels and not cspd.is_convnext
    assert not hasattr(cspd, "convnext") and hasattr(cspd, "encoder_thermal") != shared
    rgb, thermal = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs = cspd(rgb, thermal)
        assert [tuple(o.shape) for o in outs] == [(2, c, 64 // s, 64 // s) for c, s in zip(channels, (4, 8, 16, 32))]
        # per level: norm_rgb(encoder(rgb)) + norm_thermal(encoder'(thermal)), NCHW
        thermal_net = cspd.encoder if shared else cspd.encoder_thermal
        for i, (f_rgb, f_t) in enumerate(zip(cspd.encoder(rgb), thermal_net(thermal))):
            if name == SWIN:  # timm's Swin features are NHWC
                f_rgb, f_t = f_rgb.permute(0, 3, 1, 2), f_t.permute(0, 3, 1, 2)
            expected = cspd.norms_rgb[i](f_rgb) + cspd.norms_thermal[i](f_t)
            torch.testing.assert_close(outs[i], expected, rtol=1e-4, atol=1e-4)


def test_convnext_layout_and_state_dict_keys_are_unchanged():
    cspd = CSPD(name="convnext_atto", modalities=["rgb", "thermal"])
    plain = timm.create_model("convnext_atto", num_classes=0)
    plain_keys = {k for k in plain.state_dict() if not k.startswith(("head.", "norm_pre."))}
    keys = set(cspd.state_dict())
    assert cspd.is_convnext and not hasattr(cspd, "encoder")
    assert {k[len("convnext."):] for k in keys if k.startswith("convnext.")} == plain_keys
    assert keys - {f"convnext.{k}" for k in plain_keys} == {
        f"norms_{m}.{i}.{p}" for m in ("rgb", "thermal") for i in range(4) for p in ("weight", "bias")
    }


def test_non_hierarchical_and_unknown_encoders_are_rejected():
    with pytest.raises(ValueError, match=r"CSPD_NAME='deit_tiny_patch16_224' must have 4 stages at strides "
                                         r"\[4, 8, 16, 32\], got \[16, 16, 16, 16\]"):
        CSPD(name="deit_tiny_patch16_224", modalities=["rgb"])
    with pytest.raises(ValueError, match="CSPD_NAME='resnet_nope' is not a timm model"):
        CSPD(name="resnet_nope", modalities=["rgb"])


# name relative to the CSPD -> layer id (DESIGN.md s.3: stem / downsampling 0, stage i -> i + 1)
LAYER_IDS = {
    # ConvNeXt (as before)
    "convnext.stem.0.weight": 0,
    "convnext.stages.1.downsample.1.weight": 0,
    "convnext.stages.0.blocks.0.conv_dw.weight": 1,
    "convnext_thermal.stages.3.blocks.1.gamma": 4,
    # ResNet (features_only keeps timm's names): stem 0, layer k -> k with its projection shortcut
    "encoder.conv1.weight": 0,
    "encoder.bn1.bias": 0,
    "encoder.layer1.0.conv1.weight": 1,
    "encoder.layer2.0.downsample.0.weight": 2,
    "encoder_thermal.layer3.1.bn2.weight": 3,
    "encoder.layer4.1.conv2.weight": 4,
    # Swin (features_only names "layers_i"): patch embedding and patch merging 0
    "encoder.patch_embed.proj.weight": 0,
    "encoder.patch_embed.norm.bias": 0,
    "encoder.layers_0.blocks.1.attn.relative_position_bias_table": 1,
    "encoder.layers_1.downsample.reduction.weight": 0,
    "encoder_thermal.layers_1.downsample.norm.weight": 0,
    "encoder.layers_2.blocks.5.mlp.fc1.weight": 3,
    "encoder.layers_3.blocks.0.norm1.weight": 4,
    # the CSPD's own per-modality norms: not an encoder layer (full lr)
    "norms_rgb.0.weight": None,
}


@pytest.mark.parametrize("name,layer_id", LAYER_IDS.items())
def test_cspd_layer_ids(name, layer_id):
    assert cspd_layer_id(name) == layer_id
    assert get_layer_id(f"backbone.cspd.{name}", 12) == (13 if layer_id is None else layer_id)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_layer_ids_cover_every_stage_of_the_built_encoders(name):
    """Ids from the names against the encoder's own feature_info: stage i's module -> i + 1."""
    cspd = CSPD(name=name, modalities=["rgb", "thermal"], shared_weights=False, **ENCODERS[name][0])
    stage_modules = [m.replace(".", "_") for m in cspd.encoder.feature_info.module_name()]
    for param, _ in cspd.named_parameters():
        if param.startswith("norms_"):
            continue
        local = param.split(".", 1)[1]
        stage = [i for i, m in enumerate(stage_modules) if local.startswith(m + ".")]
        if not stage or ".downsample.reduction." in local or ".downsample.norm." in local:
            expected = 0  # stem, patch embedding, Swin's patch merging
        else:
            expected = stage[0] + 1
        assert cspd_layer_id(param) == expected, param


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_tiny_hapnet_trains_with_table6_encoder(tiny_cfg, name):
    tiny_cfg.MODEL.HAPNET.CSPD_NAME = name
    tiny_cfg.SOLVER.LAYER_DECAY_RATE = 0.5
    torch.manual_seed(0)
    model = build_model(tiny_cfg).train()
    assert model.backbone.cspd.channels == ENCODERS[name][1]
    losses = model([rgbt_pair(64, 64), rgbt_pair(64, 64, seed=1)])
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # the optimiser gives the encoder's stages the lr of the first ViT blocks (tiny ViT: L = 4)
    optimizer = build_optimizer(tiny_cfg, model)
    scale = {n: g["lr_scale"] for g in optimizer.param_groups for n in g["param_names"]}
    stage2 = next(n for n in scale if n.startswith(("backbone.cspd.encoder.layer2.", "backbone.cspd.encoder.layers_1.blocks")))
    assert scale[stage2] == pytest.approx(0.5 ** (5 - 2))
    stem = next(n for n in scale if n.startswith(("backbone.cspd.encoder.conv1.", "backbone.cspd.encoder.patch_embed.")))
    assert scale[stem] == pytest.approx(0.5 ** 5)
    model.eval()
    with torch.no_grad():
        out = model([rgbt_pair(64, 64)])[0]["sem_seg"]
    assert out.shape == (9, 64, 64) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_published_classifier_checkpoint_loads_into_non_convnext_encoder(tmp_path, name):
    """A timm classifier checkpoint (e.g. resnet101.a1h_in1k, swin_small ... in1k) goes through
    timm's conversion into the features_only encoder(s): every weight equals the classifier's."""
    kwargs, _ = ENCODERS[name]
    torch.manual_seed(1)
    classifier = timm.create_model(name, **kwargs)
    torch.save({"model": classifier.state_dict()}, tmp_path / "published.pth")
    cspd = CSPD(name=name, modalities=["rgb", "thermal"], shared_weights=False, **kwargs)
    report = load_cspd_weights(cspd, str(tmp_path / "published.pth"))
    assert report.missing == [] and report.unexpected == []
    reference = classifier.state_dict()
    for _, net in cspd.networks():
        for key, value in net.state_dict().items():
            # features_only flattens "layers.0" to "layers_0" (Swin); ResNet keeps its names
            original = key.replace("layers_", "layers.")
            assert torch.equal(value, reference[original]), key


def test_checkpoint_of_another_encoder_is_refused_naming_the_file(tmp_path):
    torch.save(timm.create_model("resnet34").state_dict(), tmp_path / "resnet34.pth")
    cspd = CSPD(name="resnet18", modalities=["rgb"])
    with pytest.raises(ValueError, match=r"resnet34\.pth: CSPD weights do not fit the configured encoder"):
        load_cspd_weights(cspd, str(tmp_path / "resnet34.pth"))
