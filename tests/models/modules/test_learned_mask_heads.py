from typing import cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightly_hmlc.models.modules import (
    FeatureMaskHead,
    QueryAttentionMaskHead,
    StaticMaskHead,
)
from lightly_hmlc.models.modules.attention_mask_head import mask_separation
from lightly_hmlc.registry import create_head

pytestmark = pytest.mark.usefixtures("one_thread")


def _train_towards(head: torch.nn.Module, z: Tensor, target: Tensor, steps: int = 60) -> Tensor:
    """Trains the head so that its masks put weight on ``target`` [L, D] (0/1) dims."""
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(steps):
        masks = head(z)
        # Reward weight on the target dims, penalise weight elsewhere.
        loss = ((1 - 2 * target) * masks).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head(z).detach()


# ------------------------------------------------------------------ query attention


def test_query_attention_starts_as_plain_hmlc() -> None:
    head = QueryAttentionMaskHead(3, 16)
    assert isinstance(head, FeatureMaskHead)
    masks = head(torch.randn(5, 16), torch.zeros(5, 3, dtype=torch.long))
    assert masks.shape == (5, 3, 16)
    torch.testing.assert_close(masks, torch.ones(5, 3, 16))
    assert head.regularization(masks).item() == 0.0


def test_query_attention_is_softmax_attention_over_dimension_tokens() -> None:
    torch.manual_seed(0)
    head = QueryAttentionMaskHead(2, 6, embed_dim=4, query_init_std=1.0, temperature=0.5)
    z = torch.randn(3, 6)
    masks = head(z)
    # Written out per sample, level and dimension.
    x = F.normalize(z, dim=1)
    expected = torch.empty(3, 2, 6)
    for b in range(3):
        tokens = F.gelu(x[b, :, None] * head.value_embedding + head.dim_embedding)  # [D, E]
        keys = tokens @ head.key.weight.T
        for level in range(2):
            logits = keys @ head.queries[level] / (2.0 * 0.5)  # sqrt(E) = 2
            expected[b, level] = 6 * torch.softmax(logits, 0)
    torch.testing.assert_close(masks, expected)
    torch.testing.assert_close(masks.mean(-1), torch.ones(3, 2))
    assert masks.min() > 0 and masks.std() > 0.05  # not trivially uniform
    # Per sample, and blind to the scale of z.
    assert not torch.allclose(masks[0], masks[1])
    torch.testing.assert_close(head(7 * z), masks)


def test_query_attention_learns_to_attend_to_each_levels_dimensions() -> None:
    torch.manual_seed(0)
    head = QueryAttentionMaskHead(2, 8, embed_dim=8)
    target = torch.zeros(2, 8)
    target[0, :4], target[1, 4:] = 1, 1
    masks = _train_towards(head, torch.randn(32, 8), target)
    share = (masks * target).sum(-1) / masks.sum(-1)  # weight on the level's own dims
    assert share.min() > 0.9, share.min()


def test_query_attention_gradients_reach_every_parameter_and_z() -> None:
    torch.manual_seed(0)
    head = QueryAttentionMaskHead(2, 8, query_init_std=0.5, separation_weight=0.3)
    z = torch.randn(4, 8, requires_grad=True)
    masks = head(z)
    (masks[:, 0, :3].sum() + head.regularization(masks)).backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert z.grad is not None and z.grad.abs().sum() > 0
    torch.testing.assert_close(head.regularization(masks), mask_separation(masks, 0.3, 2, 8))


def test_lower_temperature_sharpens_the_attention() -> None:
    torch.manual_seed(0)
    sharp = QueryAttentionMaskHead(2, 16, query_init_std=1.0, temperature=0.2)
    soft = QueryAttentionMaskHead(2, 16, query_init_std=1.0)
    soft.load_state_dict(sharp.state_dict())
    z = torch.randn(8, 16)
    assert sharp(z).std() > soft(z).std()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"embed_dim": 0}, "embed_dim"),
        ({"temperature": 0.0}, "temperature"),
        ({"separation_weight": -0.1}, "separation_weight"),
        ({"query_init_std": -1.0}, "query_init_std"),
        ({"num_levels": 0}, "num_levels"),
    ],
)
def test_query_attention_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    arguments = {"num_levels": 2, "dim": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        QueryAttentionMaskHead(**arguments)


# --------------------------------------------------------------------------- static


@pytest.mark.parametrize("gate, value", [("sigmoid", 0.5), ("softmax", 1.0)])
def test_static_masks_start_constant_and_ignore_z(gate: str, value: float) -> None:
    head = StaticMaskHead(3, 8, gate=gate)  # type: ignore[arg-type]
    masks = head(torch.randn(5, 8), torch.zeros(5, 3, dtype=torch.long))
    assert masks.shape == (1, 3, 8)
    torch.testing.assert_close(masks, torch.full((1, 3, 8), value))
    with torch.no_grad():
        head.logits.normal_()
    assert torch.equal(head(torch.randn(5, 8)), head(torch.randn(2, 8)))


@pytest.mark.parametrize("gate", ["sigmoid", "softmax"])
def test_static_masks_are_learned(gate: str) -> None:
    head = StaticMaskHead(2, 8, gate=gate, temperature=0.5)  # type: ignore[arg-type]
    target = torch.zeros(2, 8)
    target[0, :2], target[1, 2:] = 1, 1
    masks = _train_towards(head, torch.randn(4, 8), target)[0]
    own = (masks * target).sum(-1) / target.sum(-1)
    other = (masks * (1 - target)).sum(-1) / (1 - target).sum(-1)
    assert (own > 3 * other).all(), (own, other)
    if gate == "softmax":
        torch.testing.assert_close(masks.mean(-1), torch.ones(2))
    else:
        assert masks.max() < 1 and masks.min() > 0


def test_static_regularization_adds_separation_and_l1() -> None:
    head = StaticMaskHead(2, 4, separation_weight=0.5, l1_weight=0.2)
    with torch.no_grad():
        head.logits.copy_(torch.tensor([[3.0, 3.0, -3.0, -3.0], [-3.0, 0.0, 3.0, 3.0]]))
    masks = head(torch.randn(1, 4))
    expected = mask_separation(masks, 0.5, 2, 4) + 0.2 * masks.mean()
    torch.testing.assert_close(head.regularization(masks), expected)
    assert StaticMaskHead(2, 4).regularization(masks).item() == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gate": "relu"}, "gate"),
        ({"temperature": -1.0}, "temperature"),
        ({"l1_weight": -1.0}, "l1_weight"),
        ({"gate": "softmax", "l1_weight": 0.1}, "sigmoid"),
    ],
)
def test_static_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StaticMaskHead(2, 8, **kwargs)


@pytest.mark.parametrize("head_type", [QueryAttentionMaskHead, StaticMaskHead])
def test_new_heads_validate_their_input(head_type: type) -> None:
    head = head_type(2, 8)
    with pytest.raises(ValueError, match="D=8"):
        head(torch.randn(4, 9))
    with pytest.raises(ValueError, match="L=2"):
        head(torch.randn(4, 8), torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, 2, 8\]"):
        head.regularization(torch.ones(1, 3, 8))


@pytest.mark.parametrize(
    "name, head_type", [("query-attention", QueryAttentionMaskHead), ("static", StaticMaskHead)]
)
def test_new_heads_are_registered(name: str, head_type: type) -> None:
    head = create_head(name, num_levels=2, dim=8)
    assert type(head) is head_type
    assert head(torch.randn(3, 8)).shape[1:] == (2, 8)


@pytest.mark.parametrize("name", ["query-attention", "static"])
def test_new_heads_train_in_the_masked_loss_chain(name: str) -> None:
    from lightly_hmlc.loss import HMLCLoss
    from lightly_hmlc.registry import create_loss

    torch.manual_seed(0)
    labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2], [1, 3], [0, 0]])
    z0 = torch.randn(6, 8, requires_grad=True)
    z1 = torch.randn(6, 8)
    head = cast(FeatureMaskHead, create_head(name, num_levels=2, dim=8))
    masks = head(torch.cat([z0, z1]), labels.repeat(2, 1))
    loss = HMLCLoss("hmce")(z0, z1, labels, masks=masks) + head.regularization(masks)
    # At init the masks are constant, so the chain equals plain HMLC. (Checked with "hmc":
    # on this commit HMLCLoss applies the per-pair HiConE of "hmce" only without masks.)
    torch.testing.assert_close(
        HMLCLoss("hmc")(z0, z1, labels, masks=masks), HMLCLoss("hmc")(z0, z1, labels)
    )
    loss.backward()
    assert z0.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    # The convenience loss that owns a registered head builds the same thing.
    owned = create_loss("masked-hmlc", head=name, num_levels=2, dim=8)
    torch.testing.assert_close(owned(z0, z1, labels), loss.detach(), rtol=1e-5, atol=1e-6)
