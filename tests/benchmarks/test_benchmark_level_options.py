"""Loss options (``--loss-option``, lab variants) through the suite and the lab."""

from __future__ import annotations

import json
from pathlib import Path

import main
import pytest
from lab import Variant, split_variants

from tests.benchmarks.suite_utils import load_metrics, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = [
    "--loss-option", "temperature=0.3",
    "--loss-option", "layer_penalty=[0.5,1.0,2.0]",
    "--loss-option", "hierarchy_margin=0.1",
]  # fmt: skip


def test_the_options_reach_the_loss_and_a_loss_temperature_overrides_the_flag() -> None:
    args = main.parse_args(["--temperature", "0.4", *OPTIONS])
    # As run.py builds every method: the flag is the suite's temperature.
    model = main.build_model(
        args, "hmc", num_classes_per_level=[2, 4, 8], temperature=args.temperature
    )
    criterion = model.criterion
    assert criterion.temperature == 0.3  # the loss option, not --temperature
    assert criterion.hierarchy_margin == 0.1
    assert criterion.level_weights(3).tolist() == [0.5 / 3.5, 1.0 / 3.5, 2.0 / 3.5]  # type: ignore[operator]
    assert model.temperature == 0.4  # the suite's flag is kept for the rest of the suite
    assert model.hparams["loss_options"] == {
        "temperature": 0.3,
        "layer_penalty": [0.5, 1.0, 2.0],
        "hierarchy_margin": 0.1,
    }
    # Without a loss option the flag is the loss's temperature; masked methods too.
    flag_only = main.parse_args(["--temperature", "0.4"])
    plain = main.build_model(flag_only, "hmce", num_classes_per_level=[2, 4], temperature=0.4)
    assert plain.criterion.temperature == 0.4
    args = main.parse_args(["--temperature", "0.4", "--loss-option", "temperature=0.2"])
    masked = main.build_model(
        args, "g-hmlc", num_classes_per_level=[2, 4], proj_dim=8, temperature=args.temperature
    )
    assert masked.criterion.temperature == 0.2


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("temperature=-0.1", "temperature must be > 0"),
        ("hierarchy_margin=-1", "hierarchy_margin must be finite and >= 0"),
        ('hce_form="pair"', "Unknown hce_form 'pair'"),
        ('supcon_form="in"', "supcon_form"),
    ],
)
def test_bad_values_are_clean_errors_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, message: str
) -> None:
    # shapes has 3 levels: the suite passes num_levels, so the count is checked at build.
    assert main.main(tiny_args(tmp_path, "--methods", "hmc", "--loss-option", option)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_the_lab_variant_syntax_carries_the_options() -> None:
    text = "supcon,t=hmc:temperature=0.3:layer_penalty=[0.5,1.0,2.0]:hierarchy_margin=0.1,hmce"
    variants = [Variant.parse(part) for part in split_variants(text)]
    assert [v.name for v in variants] == ["supcon", "t", "hmce"]
    variant = variants[1]
    assert variant.loss_options == {
        "temperature": 0.3,
        "layer_penalty": [0.5, 1.0, 2.0],
        "hierarchy_margin": 0.1,
    }
    args = main.parse_args(variant.suite_args())
    model = main.build_model(args, variant.method, num_classes_per_level=[2, 4, 8])
    assert model.criterion.temperature == 0.3 and model.criterion.hierarchy_margin == 0.1
    # suite.temperature is the flag: the loss option still wins for the loss.
    both = Variant.parse("b=hmc:temperature=0.3:suite.temperature=0.5")
    assert both.suite_args()[-2:] == ["--temperature", "0.5"]
    args = main.parse_args(both.suite_args())
    model = main.build_model(
        args, "hmc", num_classes_per_level=[2, 4, 8], temperature=args.temperature
    )
    assert model.criterion.temperature == 0.3 and model.temperature == 0.5


def test_a_run_records_the_loss_options(tmp_path: Path) -> None:
    args = tiny_args(tmp_path, "--methods", "hmc", "--no-plots", "--temperature", "0.4", *OPTIONS)
    assert main.main(args) == 0
    run_dir = tmp_path / "shapes" / "hmc" / "seed0"
    # The record keeps both: the suite's flag and what the loss got (which won).
    record = load_metrics(run_dir)
    assert record["run"]["loss_options"]["temperature"] == 0.3
    assert json.loads((run_dir / "config.json").read_text())["temperature"] == 0.4
    stats = json.loads((run_dir / "train_stats.json").read_text())
    assert {f"train/loss_level{level}" for level in range(3)} <= set(stats["history"])
