import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightly_hmlc.models.modules.attention_mask_head import AttentionMaskHead
from lightly_hmlc.models.modules.feature_mask_head import FeatureMaskHead

pytestmark = pytest.mark.usefixtures("one_thread")


def test_is_a_feature_mask_head() -> None:
    head = AttentionMaskHead(3, 16)
    assert isinstance(head, FeatureMaskHead)
    assert head.num_levels == 3 and head.dim == 16 and head.hidden_dim == 8


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_shape_dtype_and_range(gate: str) -> None:
    torch.manual_seed(0)
    head = AttentionMaskHead(3, 16, hidden_dim=5, gate=gate, init_std=1.0)  # type: ignore[arg-type]
    masks = head(torch.randn(7, 16), torch.zeros(7, 3, dtype=torch.long))
    assert masks.shape == (7, 3, 16)
    assert masks.dtype == torch.float32
    assert torch.isfinite(masks).all()
    if gate == "sigmoid":
        assert masks.min() > 0 and masks.max() < 1
    else:
        assert masks.min() > 0
        torch.testing.assert_close(masks.mean(-1), torch.ones(7, 3))
    # With init_std=1 the masks are far from uniform, so the checks above are not trivial.
    assert masks.std() > 0.05


@pytest.mark.parametrize("gate, value", [("sigmoid", 0.5), ("softmax", 1.0)])
def test_masks_start_near_uniform(gate: str, value: float) -> None:
    torch.manual_seed(0)
    z = 10 * torch.randn(32, 64)
    masks = AttentionMaskHead(2, 64, gate=gate)(z)  # type: ignore[arg-type]
    assert (masks - value).abs().max() < 1e-2
    exact = AttentionMaskHead(2, 64, gate=gate, init_std=0.0)(z)  # type: ignore[arg-type]
    torch.testing.assert_close(exact, torch.full_like(exact, value))
    # A constant mask leaves normalize(z * m) equal to normalize(z): plain HMLC at init.
    torch.testing.assert_close(
        F.normalize(z[:, None] * exact, dim=-1), F.normalize(z, dim=-1)[:, None].expand_as(exact)
    )


def test_batched_levels_match_a_loop_over_levels() -> None:
    torch.manual_seed(0)
    head = AttentionMaskHead(3, 12, hidden_dim=4, init_std=0.5, temperature=0.7)
    z = torch.randn(5, 12)
    x = F.normalize(z, dim=1)
    for level in range(3):
        hidden = torch.relu(x @ head.weight1[level] + head.bias1[level])
        logits = (hidden @ head.weight2[level] + head.bias2[level]) / 0.7
        torch.testing.assert_close(head(z)[:, level], torch.sigmoid(logits))


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_nested_masks_are_running_maxima_with_a_full_finest_level(gate: str) -> None:
    torch.manual_seed(0)
    head = AttentionMaskHead(3, 12, hidden_dim=4, gate=gate, init_std=0.5, nested=True)  # type: ignore[arg-type]
    assert head.weight1.shape[0] == 2  # the finest level has no MLP
    z = torch.randn(5, 12)
    x = F.normalize(z, dim=1)
    gates = []
    for level in range(2):
        hidden = torch.relu(x @ head.weight1[level] + head.bias1[level])
        logits = hidden @ head.weight2[level] + head.bias2[level]
        gates.append(torch.sigmoid(logits) if gate == "sigmoid" else 12 * logits.softmax(-1))
    masks = head(z)
    assert masks.shape == (5, 3, 12)
    torch.testing.assert_close(masks[:, 0], gates[0])
    torch.testing.assert_close(masks[:, 1], torch.maximum(gates[0], gates[1]))
    torch.testing.assert_close(masks[:, 2], torch.ones(5, 12))
    assert (masks[:, 1] >= masks[:, 0]).all()
    if gate == "sigmoid":  # gates below 1: the full finest level is the largest
        assert (masks[:, 2] >= masks[:, 1]).all()
    # Every parameter is used (DistributedDataParallel needs it) and learns.
    (masks * torch.randn_like(masks)).sum().backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_nested_masks_start_as_plain_hmlc() -> None:
    z = 10 * torch.randn(8, 16)
    masks = AttentionMaskHead(2, 16, init_std=0.0, nested=True)(z)
    torch.testing.assert_close(masks[:, 0], torch.full((8, 16), 0.5))
    torch.testing.assert_close(
        F.normalize(z[:, None] * masks, dim=-1), F.normalize(z, dim=-1)[:, None].expand_as(masks)
    )


def test_temperature_sharpens_softmax_masks() -> None:
    torch.manual_seed(0)
    warm = AttentionMaskHead(2, 32, gate="softmax", init_std=0.5)
    cold = AttentionMaskHead(2, 32, gate="softmax", init_std=0.5, temperature=0.1)
    cold.load_state_dict(warm.state_dict())
    z = torch.randn(4, 32)
    assert cold(z).max() > warm(z).max()


def test_gradients_reach_the_head_and_z() -> None:
    torch.manual_seed(0)
    head = AttentionMaskHead(2, 16, separation_weight=0.5)
    z = torch.randn(8, 16, requires_grad=True)
    masks = head(z)
    target = torch.randn(8, 2, 16)
    loss = (F.normalize(z[:, None] * masks, dim=-1) * target).sum() + head.regularization(masks)
    loss.backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert z.grad is not None and z.grad.abs().sum() > 0
    # The gradient into z includes the path through the masks, not only the product.
    z2 = z.detach().clone().requires_grad_(True)
    (F.normalize(z2[:, None] * masks.detach(), dim=-1) * target).sum().backward()
    assert z2.grad is not None
    assert not torch.allclose(z.grad, z2.grad)


def test_regularization_defaults_to_zero() -> None:
    head = AttentionMaskHead(3, 8)
    masks = head(torch.randn(4, 8))
    reg = head.regularization(masks)
    assert reg.shape == () and reg.item() == 0.0
    single = AttentionMaskHead(1, 8, separation_weight=1.0)
    assert single.regularization(single(torch.randn(4, 8))).item() == 0.0


def test_regularization_is_weighted_mean_pairwise_cosine() -> None:
    head = AttentionMaskHead(3, 4, separation_weight=2.0)
    same = torch.ones(5, 3, 4)
    assert head.regularization(same).item() == pytest.approx(2.0)
    disjoint = torch.zeros(5, 3, 4)
    disjoint[:, 0, 0] = disjoint[:, 1, 1] = disjoint[:, 2, 2:] = 1
    assert head.regularization(disjoint).item() == pytest.approx(0.0)
    mixed = disjoint.clone()
    mixed[:, 1, 0] = 1  # level 1 = dims {0, 1}: cosine 1/sqrt(2) with level 0
    assert head.regularization(mixed).item() == pytest.approx(2.0 * (2**-0.5) / 3)
    with pytest.raises(ValueError, match="shape"):
        head.regularization(torch.ones(5, 2, 4))


def test_regularization_pushes_masks_apart() -> None:
    torch.manual_seed(0)
    head = AttentionMaskHead(2, 16, separation_weight=1.0, init_std=0.1)
    optimizer = torch.optim.SGD(head.parameters(), lr=100.0)
    z = torch.randn(32, 16)
    before = head.regularization(head(z)).item()
    for _ in range(10):
        optimizer.zero_grad()
        loss = head.regularization(head(z))
        loss.backward()
        optimizer.step()
    assert head.regularization(head(z)).item() < before - 0.1


def test_labels_are_validated_but_do_not_change_the_masks() -> None:
    head = AttentionMaskHead(2, 8)
    z = torch.randn(3, 8)
    torch.testing.assert_close(head(z), head(z, torch.tensor([[0, 1], [0, -1], [1, 2]])))


def test_double_input_uses_parameter_dtype() -> None:
    head = AttentionMaskHead(2, 8)
    assert head(torch.randn(3, 8, dtype=torch.float64)).dtype == torch.float32
    assert head.double()(torch.randn(3, 8)).dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_levels": 0, "dim": 8}, "num_levels"),
        ({"num_levels": 2, "dim": -1}, "dim"),
        ({"num_levels": 2, "dim": 8, "hidden_dim": 0}, "hidden_dim"),
        ({"num_levels": 2, "dim": 8, "gate": "relu"}, "gate"),
        ({"num_levels": 2, "dim": 8, "temperature": 0.0}, "temperature"),
        ({"num_levels": 2, "dim": 8, "separation_weight": -1.0}, "separation_weight"),
        ({"num_levels": 2, "dim": 8, "init_std": -1.0}, "init_std"),
        ({"num_levels": 1, "dim": 8, "nested": True}, "nested=True needs at least 2 levels"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AttentionMaskHead(**kwargs)


@pytest.mark.parametrize(
    "z, labels, match",
    [
        (torch.randn(2, 3, 8), None, r"shape \[B, D\]"),
        (torch.randn(4, 9), None, "D=8"),
        (torch.randn(4, 8), torch.zeros(4, 2, dtype=torch.bool), "integer"),
        (torch.randn(4, 8), torch.zeros(4, dtype=torch.long), "L=2"),
        (torch.randn(4, 8), torch.zeros(5, 2, dtype=torch.long), "labels.repeat"),
        ([[0.0] * 8], None, "torch.Tensor"),
    ],
)
def test_forward_rejects_bad_input(z: Tensor, labels: Tensor | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AttentionMaskHead(2, 8)(z, labels)


def test_base_class_contract() -> None:
    base = FeatureMaskHead(2, 4)
    with pytest.raises(NotImplementedError, match="forward"):
        base(torch.randn(3, 4))
    assert base.regularization(torch.ones(1, 2, 4)).item() == 0.0
    base.check_inputs(torch.randn(3, 4), torch.zeros(3, 2, dtype=torch.int32))
    assert repr(base) == "FeatureMaskHead(num_levels=2, dim=4)"  # a new head's repr for free
    with pytest.raises(ValueError, match="num_levels"):
        FeatureMaskHead(True, 4)  # type: ignore[arg-type]
