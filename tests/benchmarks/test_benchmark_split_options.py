"""--eval-split/--val-fraction, --loss-option/--head-option, --run-name and seed pairing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import main
import methods
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import Subset

from lightly_hmlc.models.modules import AttentionMaskHead
from tests.benchmarks.suite_utils import load_metrics, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")


def _indices(dataset: Any) -> list[int]:
    assert isinstance(dataset, Subset), type(dataset)
    return [int(i) for i in dataset.indices]


def _bundle(tmp_path: Path, *extra: str) -> main.DatasetBundle:
    # 300 shapes: 12 fine classes of ~27, so that every class gives validation samples.
    args = main.parse_args(
        tiny_args(tmp_path, "--train-samples", "300", "--test-samples", "10000", *extra)
    )
    main.check_args(args)
    return main.build_dataset(args)


def test_validation_part_is_disjoint_stratified_and_fixed_by_the_data_seed(tmp_path: Path) -> None:
    val = _bundle(tmp_path, "--eval-split", "val", "--val-fraction", "0.2")
    train_idx, val_idx = _indices(val.train), _indices(val.test_eval)
    assert not set(train_idx) & set(val_idx)
    assert val.split["val_size"] == len(val_idx) == round(0.2 * val.split["train_split_size"])
    assert len(train_idx) == 300 and val.split["eval_split"] == "val"
    # Probes train on the training part and are scored on the validation part.
    assert _indices(val.train_eval) == train_idx
    # Stratified: every fine class gives its share (to one sample) of the part.
    paths = val.train.dataset.label_paths  # type: ignore[attr-defined]
    fine = paths[:, -1]
    counts = torch.bincount(fine, minlength=12)
    in_val = torch.bincount(fine[torch.tensor(val_idx)], minlength=12)
    assert ((in_val - 0.2 * counts).abs() <= 1).all(), (in_val, counts)

    # --seeds (the training seeds) never change the split; --data-seed does.
    again = _bundle(tmp_path, "--eval-split", "val", "--val-fraction", "0.2", "--seeds", "5,6")
    assert _indices(again.test_eval) == val_idx and _indices(again.train) == train_idx
    other = _bundle(tmp_path, "--eval-split", "val", "--val-fraction", "0.2", "--data-seed", "1")
    assert _indices(other.test_eval) != val_idx

    # --eval-split test trains the same recipe (train minus val) and probes on test.
    test = _bundle(tmp_path, "--eval-split", "test", "--val-fraction", "0.2")
    assert _indices(test.train) == train_idx
    assert not isinstance(test.test_eval, Subset) or test.test_eval.dataset is not val.train_eval
    assert test.split["eval_split"] == "test" and test.split["val_size"] == len(val_idx)


def test_validation_split_of_a_real_loader_subsets_train_after_the_carve() -> None:
    paths = torch.tensor([[i % 2, i % 4] for i in range(40)])
    val, rest = main.validation_split(paths, 0.25, seed=3)
    assert sorted(val + rest) == list(range(40)) and len(val) == 10
    assert torch.bincount(paths[torch.tensor(val), 1]).tolist() == [3, 3, 2, 2] or sorted(
        torch.bincount(paths[torch.tensor(val), 1]).tolist()
    ) == [2, 2, 3, 3]
    assert main.validation_split(paths, 0.25, seed=3) == (val, rest)
    assert main.validation_split(paths, 0.0, seed=3) == ([], list(range(40)))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--val-fraction", "1.0"), "--val-fraction must be in [0, 1)"),
        (("--eval-split", "val", "--val-fraction", "0"), "needs a validation part"),
        (("--loss-option", "temperature"), "KEY=VALUE"),
        (("--methods", "hmce", "--loss-option", "no_such=1"), "no_such"),
        (("--methods", "a-hmlc", "--head-option", "no_such=1"), "no_such"),
        (("--methods", "hmce", "--head-option", "hidden_dim=8"), "mask head"),
        (("--methods", "ce", "--loss-option", "temperature=0.2"), "builds no registered loss"),
        (("--run-name", "a/b"), "--run-name"),
    ],
)
def test_bad_split_and_option_values_are_clean_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    assert main.main(tiny_args(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_options_reach_the_loss_and_the_head() -> None:
    args = main.parse_args(
        ["--loss-option", "temperature=0.35", "--loss-option", 'layer_penalty="pow2"']
    )
    model = main.build_model(args, "hmce", num_classes_per_level=[2, 4])
    assert model.criterion.temperature == pytest.approx(0.35)
    assert model.hparams["loss_options"] == {"temperature": 0.35, "layer_penalty": "pow2"}
    args = main.parse_args(["--head-option", "separation_weight=0.5"])
    model = main.build_model(args, "a-hmlc", num_classes_per_level=[2, 4], proj_dim=16)
    assert cast(AttentionMaskHead, model.mask_head).separation_weight == 0.5
    assert model.hparams["head_options"] == {"separation_weight": 0.5}


class RecordBatches(pl.Callback):
    """Keeps a fingerprint of every training batch: its views and label paths."""

    def __init__(self) -> None:
        self.batches: dict[str, list[tuple[float, float, list[list[int]]]]] = {}

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        views, labels = batch
        method_name = cast(methods.HierarchicalMethod, pl_module).method_name
        self.batches.setdefault(method_name, []).append(
            (float(views[0].sum()), float(views[1].sum()), labels.tolist())
        )


def test_methods_of_one_seed_see_the_same_batches_and_run_names_keep_variants(
    tmp_path: Path,
) -> None:
    recorder = RecordBatches()
    common = ("--epochs", "2", "--no-plots")
    args = main.parse_args(tiny_args(tmp_path, "--methods", "hmce,a-hmlc,ce", *common))
    main.run_suite(args, extra_callbacks=[recorder])
    hmce, ahmlc, ce = (recorder.batches[m] for m in ("hmce", "a-hmlc", "ce"))
    assert len(hmce) == 4 and hmce == ahmlc == ce  # same order and same augmentations
    assert hmce[0] != hmce[2]  # epochs differ

    # A variant of hmce lives next to it in the same output folder.
    variant = ("--methods", "hmce", "--run-name", "tau0.3", "--loss-option", "temperature=0.3")
    main.run_suite(main.parse_args(tiny_args(tmp_path, *common, *variant)))
    base = load_metrics(tmp_path / "shapes/hmce/seed0")
    other = load_metrics(tmp_path / "shapes/hmce-tau0.3/seed0")
    assert base["run"]["name"] == "hmce" and other["run"]["name"] == "hmce-tau0.3"
    assert other["run"]["loss_options"] == {"temperature": 0.3}
    assert base["eval"]["level0/linear_acc"] >= 0 and "split" in other
