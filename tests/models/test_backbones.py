import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, cast

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from lightly_hmlc.models.backbones import CifarResNet, create_backbone, feature_dim

# (name, extra kwargs at 32x32, extra kwargs at 224x224, feature width)
FAMILIES: list[tuple[str, dict[str, Any], dict[str, Any], int]] = [
    ("resnet18_cifar", {}, {}, 512),
    ("resnet18", {}, {}, 512),
    ("convnext_atto", {}, {}, 320),
    ("vit_tiny_patch16_224", {"img_size": 32}, {}, 192),
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fails any connection attempt and points every weight cache at empty folders."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("name, kwargs32, kwargs224, width", FAMILIES)
def test_features_have_reported_width(
    name: str, kwargs32: dict[str, Any], kwargs224: dict[str, Any], width: int, size: int
) -> None:
    torch.manual_seed(0)
    model, dim = create_backbone(name, **(kwargs32 if size == 32 else kwargs224))
    assert dim == width
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, dim)
    assert dim == feature_dim(model)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "name, shape",
    [
        ("resnet18_cifar", (2, 512, 4, 4)),
        ("resnet34_cifar", (2, 512, 4, 4)),
        ("resnet50_cifar", (2, 2048, 4, 4)),
        ("resnet_tiny_cifar", (2, 64, 4, 4)),
    ],
)
def test_cifar_stem_keeps_4x4_map(name: str, shape: tuple[int, ...]) -> None:
    model, dim = create_backbone(name)
    assert dim == shape[1]
    model.eval()
    resnet = cast(timm.models.resnet.ResNet, model)  # a timm ResNet: it has forward_features
    with torch.no_grad():
        assert resnet.forward_features(torch.randn(2, 3, 32, 32)).shape == shape
    assert isinstance(model, timm.models.resnet.ResNet)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)


def test_imagenet_resnet_shrinks_32x32_to_1x1() -> None:
    # The contrast that motivates the CIFAR stem.
    model, _ = create_backbone("resnet18")
    model.eval()
    resnet = cast(timm.models.resnet.ResNet, model)  # a timm ResNet: it has forward_features
    with torch.no_grad():
        assert resnet.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)


def test_timm_create_model_knows_cifar_models() -> None:
    model = timm.create_model("resnet18_cifar", num_classes=10)
    # By name: the class differs if the module was imported twice under two names.
    assert type(model).__name__ == CifarResNet.__name__
    assert isinstance(model, timm.models.resnet.ResNet)
    assert model.head_hidden_size == 512
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert {"resnet18_cifar", "resnet50_cifar", "resnet_tiny_cifar"} <= set(
        timm.list_models("*_cifar")
    )
    # timm sets pretrained_cfg on the model it builds; nn.Module does not declare it.
    assert cast(dict[str, Any], model.pretrained_cfg)["input_size"] == (3, 32, 32)


def test_cifar_features_only_reductions() -> None:
    model = cast(
        timm.models.FeatureListNet, timm.create_model("resnet_tiny_cifar", features_only=True)
    )
    assert model.feature_info.reduction() == [1, 1, 2, 4, 8]
    maps = model(torch.randn(1, 3, 32, 32))
    assert [m.shape[-1] for m in maps] == [32, 32, 16, 8, 4]


def test_in_chans() -> None:
    model, dim = create_backbone("resnet_tiny_cifar", in_chans=1)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, dim)


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match="resnet18_cifar"):
        create_backbone("resnet18_cifr")
    with pytest.raises(ValueError, match="convnext_atto"):
        create_backbone("convnext_ato")


def test_hub_names_are_refused() -> None:
    with pytest.raises(ValueError, match="local-dir"):
        create_backbone("hf-hub:timm/resnet18.a1_in1k")


def test_img_size_for_convnet_is_explained() -> None:
    with pytest.raises(ValueError, match="img_size"):
        create_backbone("resnet_tiny_cifar", img_size=32)


def test_num_classes_is_refused() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_backbone("resnet_tiny_cifar", num_classes=10)


def _classifier_state_dict(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model(name, num_classes=10).state_dict()


@pytest.mark.parametrize("layout", ["plain", "wrapped", "model_key", "ddp", "safetensors"])
def test_local_checkpoint_round_trip(tmp_path: Path, layout: str) -> None:
    state = _classifier_state_dict("resnet_tiny_cifar")
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "safetensors":
        save_file(state, str(path))
    elif layout == "wrapped":
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif layout == "model_key":
        torch.save({"model": state}, path)
    elif layout == "ddp":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save(state, path)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the dropped classifier is not worth a warning
        model, _ = create_backbone("resnet_tiny_cifar", pretrained=path)
    loaded = model.state_dict()
    assert not any(k.startswith("fc.") for k in loaded)
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    # Really loaded, not a coincidence of initialisation.
    fresh, _ = create_backbone("resnet_tiny_cifar")
    assert not torch.equal(fresh.state_dict()["conv1.weight"], loaded["conv1.weight"])


def test_checkpoint_path_as_str(tmp_path: Path) -> None:
    state = _classifier_state_dict("resnet_tiny_cifar")
    torch.save(state, tmp_path / "w.pt")
    model, _ = create_backbone("resnet_tiny_cifar", pretrained=str(tmp_path / "w.pt"))
    assert torch.equal(model.state_dict()["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])


def test_missing_checkpoint_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_backbone("resnet_tiny_cifar", pretrained=missing)


def test_checkpoint_without_matching_keys(tmp_path: Path) -> None:
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="No key"):
        create_backbone("resnet_tiny_cifar", pretrained=tmp_path / "w.pth")


def test_checkpoint_of_other_architecture(tmp_path: Path) -> None:
    # An ImageNet-stem checkpoint does not fit the CIFAR stem: say which tensor.
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"conv1\.weight: checkpoint \(64, 3, 7, 7\)"):
        create_backbone("resnet18_cifar", pretrained=tmp_path / "w.pth")


def test_partial_checkpoint_warns(tmp_path: Path) -> None:
    state = _classifier_state_dict("resnet_tiny_cifar")
    del state["layer4.0.conv2.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pth")
    with pytest.warns(UserWarning, match=r"1 model keys are missing.*layer4\.0\.conv2\.weight"):
        create_backbone("resnet_tiny_cifar", pretrained=tmp_path / "w.pth")


def test_checkpoint_that_is_not_a_state_dict(tmp_path: Path) -> None:
    torch.save({"epoch": 3}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        create_backbone("resnet_tiny_cifar", pretrained=tmp_path / "w.pth")


def test_pretrained_true_fails_fast_offline() -> None:
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        create_backbone("resnet18", pretrained=True)
    # No download attempt (that would hang), even on a loaded machine.
    assert time.perf_counter() - start < 30.0
    message = str(info.value)
    assert "not in the local cache" in message
    assert "pretrained='/path/to/weights.pth'" in message
    assert "timm/resnet18.a1_in1k" in message


def test_pretrained_true_without_known_weights() -> None:
    with pytest.raises(ValueError, match="no pretrained weights for 'resnet18_cifar'"):
        create_backbone("resnet18_cifar", pretrained=True)


def test_pretrained_true_invalid_tag() -> None:
    with pytest.raises(ValueError, match="Available tags"):
        create_backbone("resnet18.nonexistent_tag", pretrained=True)


def test_pretrained_true_uses_hf_cache(tmp_path: Path) -> None:
    torch.manual_seed(2)
    state = timm.create_model("resnet18").state_dict()
    repo = tmp_path / "hf" / "models--timm--resnet18.a1_in1k"
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    save_file(state, str(snapshot / "model.safetensors"))

    model, dim = create_backbone("resnet18", pretrained=True)
    assert dim == 512
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])


def test_pretrained_true_uses_torch_hub_cache(tmp_path: Path) -> None:
    torch.manual_seed(3)
    state = timm.create_model("resnet18").state_dict()
    folder = tmp_path / "torch" / "checkpoints"
    folder.mkdir(parents=True)
    cfg = timm.models.get_pretrained_cfg("resnet18")
    assert cfg is not None and isinstance(cfg.url, str)
    torch.save(state, folder / os.path.basename(cfg.url))

    model, _ = create_backbone("resnet18", pretrained=True)
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="in_chans"):
        create_backbone("resnet_tiny_cifar", in_chans=0)
    with pytest.raises(TypeError, match="pretrained"):
        create_backbone("resnet_tiny_cifar", pretrained=1.0)  # type: ignore[arg-type]


def test_compiled_checkpoint_prefix_is_removed(tmp_path: Path) -> None:
    # timm's load_state_dict strips torch.compile's "_orig_mod." as well as DDP's "module.".
    state = _classifier_state_dict("resnet_tiny_cifar")
    torch.save({f"_orig_mod.module.{k}": v for k, v in state.items()}, tmp_path / "w.pth")
    model, _ = create_backbone("resnet_tiny_cifar", pretrained=tmp_path / "w.pth")
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])


def test_unreadable_checkpoint_names_file_and_fix(tmp_path: Path) -> None:
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"Could not read checkpoint .*broken\.pth.*state dict"):
        create_backbone("resnet_tiny_cifar", pretrained=tmp_path / "broken.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        create_backbone("resnet_tiny_cifar", pretrained=tmp_path / "list.pth")
