"""The long-tailed layout of ``benchmarks/lab/sampler_shares.py`` and its table."""

from __future__ import annotations

import sys

import pytest
import sampler_shares


def test_lt3_label_paths_follow_the_lab_tree() -> None:
    paths = sampler_shares.lt3_label_paths()
    assert paths.shape == (3400, 3)
    assert int((paths[:, 0] == 0).sum()) == 400  # 4 vehicle classes of 100 images
    assert paths[:, 1].unique().numel() == 4 and paths[:, 2].unique().numel() == 10
    # Every middle class belongs to one top-level class, every leaf to one middle class.
    for parent, child in ((0, 1), (1, 2)):
        pairs = {(int(a), int(b)) for a, b in paths[:, [parent, child]].tolist()}
        assert len(pairs) == paths[:, child].unique().numel()


def test_the_table_shows_both_rules(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["sampler_shares.py"])
    sampler_shares.main()
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()}
    assert "| 50.0 % |" in rows["equal"]  # two top-level classes: half of every batch
    share = float(rows["frequency"].split(" | ")[1].removesuffix(" %"))
    assert 400 / 3400 * 100 - 2 <= share <= 20  # close to the data's 11.8 %
