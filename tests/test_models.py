"""MSXception and the small CNN: shapes, ImageNet weight loading from a file the test writes, errors."""

from __future__ import annotations

import pretrainedmodels
import pytest
import torch

from asc import AscError
from asc.models import (XCEPTION_WEIGHTS_FILE, GlobalWeightedRankPooling, ModelConfig, MSXception, SmallCNN,
                        build_model, default_weights_path)


def _imagenet_file(path):
    """A weights file in pretrainedmodels' format (an Xception state dict with an `fc` head)."""
    torch.manual_seed(1)
    net = pretrainedmodels.xception(num_classes=1000, pretrained=None)
    state = {("fc." + k[len("last_linear."):] if k.startswith("last_linear.") else k): v
             for k, v in net.state_dict().items()}
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], 0.125)  # recognisable
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_msxception_shapes():
    model = MSXception(ModelConfig(pretrained=False)).eval()
    with torch.no_grad():
        x = torch.randn(2, 64, 120)
        assert model.embeddings(x).shape == (2, 728 + 1024 + 2048)
        assert model(x).shape == (2, 10)
        assert model(x.unsqueeze(1)).shape == (2, 10)  # [B, 1, M, T] too


def test_msxception_trains_a_step():
    model = MSXception(ModelConfig(pretrained=False, n_classes=3))
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 64, 80)), torch.tensor([0, 2]))
    loss.backward()
    assert model.backbone.conv1.weight.grad is not None and model.head[-1].weight.grad is not None


def test_weights_from_a_given_file(tmp_path):
    state = _imagenet_file(tmp_path / "imagenet.pth")
    model = MSXception(ModelConfig(weights=str(tmp_path / "imagenet.pth")))
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.backbone.block12.skip.weight, state["block12.skip.weight"])


def test_weights_from_pretrainedmodels_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert default_weights_path() == tmp_path / "hub" / "checkpoints" / XCEPTION_WEIGHTS_FILE
    _imagenet_file(default_weights_path())
    model = MSXception(ModelConfig())
    assert model.backbone.conv1.weight.detach().mean().item() == 0.125


def test_missing_weights_name_the_expected_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(AscError, match=str(default_weights_path())):
        MSXception(ModelConfig())
    with pytest.raises(AscError, match="nope.pth"):
        MSXception(ModelConfig(weights=str(tmp_path / "nope.pth")))


def test_wrong_weights_files_are_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(AscError, match="junk.pth: not a readable"):
        MSXception(ModelConfig(weights=str(tmp_path / "junk.pth")))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(AscError, match="other.pth: not Xception ImageNet weights"):
        MSXception(ModelConfig(weights=str(tmp_path / "other.pth")))


def test_small_cnn_shapes_for_any_band_count():
    model = SmallCNN(ModelConfig(name="cnn", n_classes=7)).eval()
    for shape in [(3, 128, 430), (3, 64, 86), (3, 1, 256, 100)]:
        assert model(torch.randn(*shape)).shape == (3, 7)


def test_rank_pooling_between_mean_and_max():
    x = torch.randn(2, 3, 4, 5)
    assert torch.allclose(GlobalWeightedRankPooling(1.0)(x), x.mean(dim=(2, 3)))
    assert torch.allclose(GlobalWeightedRankPooling(0.0)(x), x.amax(dim=(2, 3)))


def test_unknown_model():
    with pytest.raises(AscError, match="model must be"):
        build_model(ModelConfig(name="resnet"))


def test_weights_saved_before_pytorch_0_4_1_load(tmp_path):
    """The real xception-43020ad28.pth predates BatchNorm's num_batches_tracked buffers."""
    state = _imagenet_file(tmp_path / "imagenet.pth")
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(state)
    torch.save(old, tmp_path / "old.pth")
    model = MSXception(ModelConfig(weights=str(tmp_path / "old.pth")))
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])
    del old["block12.skip.weight"]  # a real gap is still refused
    torch.save(old, tmp_path / "gap.pth")
    with pytest.raises(AscError, match="gap.pth: not Xception ImageNet weights .*block12.skip.weight"):
        MSXception(ModelConfig(weights=str(tmp_path / "gap.pth")))


def test_rank_pooling_weights_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 40, 100).bfloat16()  # 4000 ranks: 0.998 ** rank in bf16 is off by up to a third
    pool = GlobalWeightedRankPooling(0.998)
    expected = pool(x.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pool(x)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    weights = 0.998 ** torch.arange(4000, dtype=torch.float32)
    assert torch.allclose(expected, (x.float().flatten(2).sort(-1, descending=True).values * weights).sum(-1)
                          / weights.sum(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field, value", [("pooling", "max"), ("pooling", "GWRP"), ("gwrp_decay", 1.5),
                                          ("dropout", 1.0), ("width", 0)])
def test_bad_model_settings_are_refused(field, value):
    with pytest.raises(AscError, match=field):
        ModelConfig(**{field: value})
