import pytest
import timm
import torch
from safetensors.torch import save_file

from ferens.errors import FerensError
from ferens.models.factory import create_member_model

# Spatial size of the last feature map for a 48x48 input: 48 / (4 | 2 | 1) / 8.
STEM_FEATURE_SIDE = {"default": 2, "s2": 3, "s1": 6}


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet18d"])
@pytest.mark.parametrize("stem", ["default", "s2", "s1"])
def test_every_depth_and_stem_builds_and_trains_one_step(name, stem):
    torch.manual_seed(0)
    model = create_member_model(name, stem=stem, width=0.25)
    x, y = torch.randn(2, 1, 48, 48), torch.tensor([1, 5])
    assert model.forward_features(x).shape[-1] == STEM_FEATURE_SIDE[stem]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.fc.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert model(x).shape == (2, 7) and torch.isfinite(loss)
    assert not torch.equal(before, model.fc.weight)


def test_width_scales_the_parameter_count():
    full = sum(p.numel() for p in create_member_model("resnet18").parameters())
    half = sum(p.numel() for p in create_member_model("resnet18", width=0.5).parameters())
    assert 0.2 < half / full < 0.3


def test_pretrained_rgb_weights_are_adapted_to_one_channel(tmp_path):
    rgb = timm.create_model("resnet18", num_classes=1000)
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()},
              str(tmp_path / "r18.safetensors"))
    model = create_member_model("resnet18", pretrained=tmp_path / "r18.safetensors")
    expected = rgb.conv1.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(model.conv1.weight, expected)
    assert torch.equal(model.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)
    torch.save(rgb.state_dict(), tmp_path / "r18.pth")
    from_pth = create_member_model("resnet18", pretrained=tmp_path / "r18.pth")
    assert torch.allclose(from_pth.conv1.weight, expected)


def test_pretrained_weights_that_do_not_fit_are_rejected_clearly(tmp_path):
    r34 = timm.create_model("resnet34", num_classes=1000)
    torch.save(r34.state_dict(), tmp_path / "r34.pth")
    with pytest.raises(FerensError, match=r"r34.pth: weights do not fit this architecture"):
        create_member_model("resnet18", pretrained=tmp_path / "r34.pth")
    with pytest.raises(FerensError, match="not found .ferens never downloads"):
        create_member_model("resnet18", pretrained=tmp_path / "missing.safetensors")


def test_unknown_model_and_stem_are_rejected():
    with pytest.raises(FerensError, match="not a timm ResNet"):
        create_member_model("vit_base_patch16_224")
    with pytest.raises(FerensError, match="unknown stem"):
        create_member_model("resnet18", stem="s4")


@pytest.mark.parametrize("name, stem_channels", [("resnet18", 64), ("resnet50", 64),
                                                 ("resnet18d", 32)])
def test_width_scales_the_stages_and_only_a_deep_stem(name, stem_channels):
    """What --width documents: stages at 0.5x; a plain ResNet's stem stays 64 channels (timm's
    stem_width is read by deep stems only), a deep stem halves. Saved models depend on it."""
    full, half = create_member_model(name), create_member_model(name, width=0.5)
    assert half.bn1.num_features == stem_channels
    assert full.bn1.num_features == 64
    first_stage = lambda m: m.layer1[0].conv1.out_channels  # noqa: E731
    assert first_stage(half) * 2 == first_stage(full)
    assert half.num_features * 2 == full.num_features


def test_models_refuse_to_import_when_the_config_declares_a_stem_they_lack():
    import subprocess
    import sys

    code = "import ferens.config as c; c.STEMS['s4'] = 'new'; import ferens.models.factory"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode != 0
    assert "ferens.config declares ['default', 's1', 's2', 's4']" in done.stderr
