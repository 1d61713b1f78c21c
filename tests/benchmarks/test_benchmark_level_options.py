"""Per-level temperatures, L_in and the instance term through the suite and the lab."""

from __future__ import annotations

import json
from pathlib import Path

import main
import pytest
from lab import Variant, split_variants

from tests.benchmarks.suite_utils import load_metrics, tiny_args

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = [
    "--loss-option", "temperature=[0.3,0.2,0.1]",
    "--loss-option", 'supcon_form="in"',
    "--loss-option", "instance_weight=1.0",
]  # fmt: skip


def test_the_options_reach_the_loss_and_a_loss_temperature_overrides_the_flag() -> None:
    args = main.parse_args(["--temperature", "0.4", *OPTIONS])
    # As run.py builds every method: the flag is the suite's temperature.
    model = main.build_model(
        args, "hmc", num_classes_per_level=[2, 4, 8], temperature=args.temperature
    )
    criterion = model.criterion
    assert criterion.temperature == (0.3, 0.2, 0.1)  # the loss option, not --temperature
    assert (criterion.supcon_form, criterion.instance_weight) == ("in", 1.0)
    assert model.temperature == 0.4  # the suite's flag is kept for the rest of the suite
    assert model.hparams["loss_options"] == {
        "temperature": [0.3, 0.2, 0.1],
        "supcon_form": "in",
        "instance_weight": 1.0,
    }
    # Without a loss option the flag is the loss's temperature; masked methods too.
    flag_only = main.parse_args(["--temperature", "0.4"])
    plain = main.build_model(flag_only, "hmce", num_classes_per_level=[2, 4], temperature=0.4)
    assert plain.criterion.temperature == 0.4
    args = main.parse_args(["--temperature", "0.4", "--loss-option", "temperature=[0.2,0.1]"])
    masked = main.build_model(
        args, "g-hmlc", num_classes_per_level=[2, 4], proj_dim=8, temperature=args.temperature
    )
    assert masked.criterion.temperature == (0.2, 0.1)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("temperature=[0.2,0.1]", "temperature has 2 values (one per level) but the labels have 3"),
        ("temperature=[0.2,-0.1,0.1]", "temperature[1] must be > 0"),
        ('supcon_form="inner"', "Unknown supcon_form 'inner'"),
        ("instance_weight=-1", "instance_weight must be a finite number >= 0"),
    ],
)
def test_bad_values_are_clean_errors_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, message: str
) -> None:
    # shapes has 3 levels: the suite passes num_levels, so the count is checked at build.
    assert main.main(tiny_args(tmp_path, "--methods", "hmc", "--loss-option", option)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_l_in_with_the_per_pair_form_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_args(tmp_path, "--methods", "hmce", "--loss-option", 'supcon_form="in"')
    assert main.main(args) == 2
    assert "L_in has no per-pair losses" in capsys.readouterr().err


def test_the_lab_variant_syntax_carries_the_options() -> None:
    text = "supcon,t=hmc:temperature=[0.3,0.2,0.1]:supcon_form=in:instance_weight=1.0,hmce"
    variants = [Variant.parse(part) for part in split_variants(text)]
    assert [v.name for v in variants] == ["supcon", "t", "hmce"]
    variant = variants[1]
    assert variant.loss_options == {
        "temperature": [0.3, 0.2, 0.1],
        "supcon_form": "in",
        "instance_weight": 1.0,
    }
    args = main.parse_args(variant.suite_args())
    model = main.build_model(args, variant.method, num_classes_per_level=[2, 4, 8])
    assert model.criterion.temperature == (0.3, 0.2, 0.1)
    assert model.criterion.supcon_form == "in" and model.criterion.instance_weight == 1.0
    # suite.temperature is the flag: the loss option still wins for the loss.
    both = Variant.parse("b=hmc:temperature=[0.3,0.2,0.1]:suite.temperature=0.5")
    assert both.suite_args()[-2:] == ["--temperature", "0.5"]
    args = main.parse_args(both.suite_args())
    model = main.build_model(
        args, "hmc", num_classes_per_level=[2, 4, 8], temperature=args.temperature
    )
    assert model.criterion.temperature == (0.3, 0.2, 0.1) and model.temperature == 0.5


def test_a_run_with_the_options_logs_the_instance_term(tmp_path: Path) -> None:
    args = tiny_args(tmp_path, "--methods", "hmc", "--no-plots", "--temperature", "0.4", *OPTIONS)
    assert main.main(args) == 0
    run_dir = tmp_path / "shapes" / "hmc" / "seed0"
    # The record keeps both: the suite's flag and what the loss got (which won).
    record = load_metrics(run_dir)
    assert record["run"]["loss_options"]["temperature"] == [0.3, 0.2, 0.1]
    assert json.loads((run_dir / "config.json").read_text())["temperature"] == 0.4
    stats = json.loads((run_dir / "train_stats.json").read_text())
    # Three label levels, then the instance term.
    assert {f"train/loss_level{level}" for level in range(4)} <= set(stats["history"])
