"""The documented extension point: a subclass of HMLCLoss that overrides level_weights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lightly_hmlc import HMLCLoss
from tests.loss import naive

CONTRIBUTING = Path(__file__).resolve().parents[2] / "CONTRIBUTING.md"


def _extension_class() -> type[HMLCLoss]:
    """The subclass exactly as CONTRIBUTING.md shows it."""
    text = CONTRIBUTING.read_text()
    section = text[text.index("## Extending a loss") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(code.group(1), namespace)  # noqa: S102 - our own document
    cls = namespace["PaperDivisorHMLCLoss"]
    assert isinstance(cls, type) and issubclass(cls, HMLCLoss)
    return cls


@pytest.mark.parametrize("loss_type", ["hmc", "hce", "hmce"])
def test_the_paper_divisor_subclass_matches_the_loop(loss_type: str) -> None:
    generator = torch.Generator().manual_seed(0)
    out0 = torch.randn(8, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    out1 = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    labels = naive.random_tree_labels(8, [2, 2], generator, unknown=0.2)
    loss = _extension_class()(loss_type, temperature=0.3)(out0, out1, labels)
    expected = naive.hmlc(out0, out1, labels, loss_type, 0.3, "exp", False, "anchor_mean")
    naive.assert_value_and_gradients_close(loss, expected, [out0])
    if loss_type != "hce":  # the divisor changes the value: the hook is really used
        assert not torch.allclose(loss, HMLCLoss(loss_type, temperature=0.3)(out0, out1, labels))
