"""Bad input ends with one clear message and exit code 2; presets, samplers, seeding."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import main
import pytest
import torch
from cli import parse_args
from datasets import SuiteDataModule, build_dataset

from lightly_hmlc.data import HierarchicalBatchSampler
from tests.benchmarks.suite_utils import tiny_args


def test_resume_path_needs_a_single_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main.main(tiny_args(tmp_path, "--methods", "hmce,hmc", "--resume", "x.ckpt"))
    assert code == 2 and "one method and one seed" in capsys.readouterr().err


def test_missing_data_folder_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-cifar-here"
    code = main.main(tiny_args(tmp_path, "--dataset", "cifar100", "--data-dir", str(missing)))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert "cifar100" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--methods", "hmce,nope"), "Unknown method"),
        (("--dataset", "nope"), "Unknown --dataset"),
        (("--seeds", "a,b"), "--seeds"),
        (("--batch-size", "128"), "fewer than one batch"),
        (("--dataset", "imagefolder", "--data-dir", "."), "needs --hierarchy"),
    ],
)
def test_bad_arguments_are_clean_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    assert main.main(tiny_args(tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err


def _image_folder(root: Path, classes: list[str]) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for j in range(4):
                colour = (40 * i, 255 - 40 * i, 20 * j)
                Image.new("RGB", (16, 16), colour).save(folder / f"{j}.png")


def _needs_image_folder() -> None:
    import lightly_hmlc.data

    if not hasattr(lightly_hmlc.data, "HierarchicalImageFolder"):
        pytest.skip("lightly_hmlc.data.HierarchicalImageFolder is not available")


def test_hierarchy_not_matching_the_folders_lists_the_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _needs_image_folder()
    _image_folder(tmp_path / "data", ["cat", "dog", "car"])
    tree = tmp_path / "tree.txt"
    tree.write_text("animal cat\nanimal dog\nvehicle truck\n")
    args = tiny_args(tmp_path, "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"))
    assert main.main([*args, "--hierarchy", str(tree)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "car" in err and "truck" in err


def test_unreadable_image_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _needs_image_folder()
    _image_folder(tmp_path / "data", ["cat", "dog", "car", "bus"])
    broken = tmp_path / "data" / "train" / "dog" / "1.png"
    broken.write_bytes(b"not an image")
    tree = tmp_path / "tree.txt"
    tree.write_text("animal cat\nanimal dog\nvehicle car\nvehicle bus\n")
    args = tiny_args(
        tmp_path,
        "--dataset", "imagefolder",
        "--data-dir", str(tmp_path / "data"),
        "--hierarchy", str(tree),
        "--train-samples", "16",
        "--batch-size", "8",
        "--methods", "hmce",
    )  # fmt: skip
    assert main.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "1.png" in err


def test_preset_sets_defaults_and_explicit_arguments_win() -> None:
    args = main.parse_args(["--preset", "cifar100-paper", "--epochs", "3"])
    assert (args.dataset, args.backbone, args.batch_size, args.temperature) == (
        "cifar100",
        "resnet50_cifar",
        512,
        0.1,
    )
    assert args.epochs == 3 and args.probe_epochs == 100
    assert main.parse_args([]).dataset == "shapes" and main.parse_args([]).methods == "all"
    modelnet = main.parse_args(["--preset", "modelnet40-paper"])
    assert modelnet.dataset == "modelnet40" and modelnet.view_fuse == "concat"


def test_epoch_batches_shard_ranks_and_depend_only_on_seed_and_epoch() -> None:
    def batches(rank: int, epoch: int, seed: int = 0) -> list[list[int]]:
        sampler = main.EpochBatchSampler(20, 4, seed=seed, num_replicas=2, rank=rank)
        sampler.set_epoch(epoch)
        return list(sampler)

    rank0, rank1 = batches(0, 0), batches(1, 0)
    assert len(rank0) == len(rank1) == 2 and all(len(b) == 4 for b in rank0 + rank1)
    assert not set(sum(rank0, [])) & set(sum(rank1, []))
    assert batches(0, 0) == rank0 and batches(0, 1) != rank0 and batches(0, 0, seed=1) != rank0


def test_seeded_views_repeat_augmentations_and_restore_the_rng() -> None:
    class Noise(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> torch.Tensor:
            return torch.rand(3)

    views = main.SeededViews(Noise(), seed=0)
    state = torch.get_rng_state()
    first = views[(0, 1)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(views[(0, 1)], first)
    assert not torch.equal(views[(1, 1)], first) and not torch.equal(views[(0, 2)], first)


def test_leaves_without_data_need_no_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _needs_image_folder()
    _image_folder(tmp_path / "data", ["cat", "dog", "car", "bus"])
    tree = tmp_path / "tree.txt"
    tree.write_text("animal cat\nanimal dog\nvehicle car\nvehicle bus\nvehicle truck\n")
    args = tiny_args(
        tmp_path,
        "--dataset", "imagefolder",
        "--data-dir", str(tmp_path / "data"),
        "--hierarchy", str(tree),
        "--train-samples", "16",
        "--batch-size", "8",
        "--methods", "hmce",
        "--no-plots",
        "--val-fraction", "0",
    )  # fmt: skip
    assert main.main(args) == 2
    err = capsys.readouterr().err
    assert "truck" in err and "--no-strict" in err and "strict=False" not in err
    assert main.main([*args, "--no-strict"]) == 0


def test_sampler_options_reach_the_hierarchical_sampler(tmp_path: Path) -> None:
    args = tiny_args(
        tmp_path,
        "--methods", "hmce",
        "--hierarchical-sampler",
        "--sampler-option", "top_level_shares=frequency",
        "--sampler-option", "samples_per_class=3",
    )  # fmt: skip
    assert main.main(args) == 0
    run_dir = tmp_path / "shapes" / "hmce" / "seed0"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["hierarchical_sampler"] is True
    assert config["sampler_option"] == ["top_level_shares=frequency", "samples_per_class=3"]
    # The loader the suite trains with is built from those options.
    bundle = build_dataset(parse_args(args))
    module = SuiteDataModule(bundle, 32, 0, 0, True, {"top_level_shares": "frequency"})
    module.trainer = SimpleNamespace(world_size=1, global_rank=0, current_epoch=0)  # type: ignore[assignment]
    sampler = module.train_dataloader().batch_sampler.batch_sampler  # type: ignore[union-attr]
    assert isinstance(sampler, HierarchicalBatchSampler)
    assert sampler.top_level_shares == "frequency"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--sampler-option", "samples_per_class=3"), "add --hierarchical-sampler"),
        (("--hierarchical-sampler", "--sampler-option", "seed=3"), "not a HierarchicalBatchSampler option"),
        (("--hierarchical-sampler", "--sampler-option", "top_level_shares=even"), "top_level_shares must be one of"),
    ],
)  # fmt: skip
def test_bad_sampler_options_are_clean_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    assert main.main(tiny_args(tmp_path, "--methods", "hmce", *extra)) == 2
    assert message in capsys.readouterr().err


def test_a_checkpoint_from_before_a_new_setting_resumes_with_it_off() -> None:
    from run import ADDED_FIELDS, check_resume_config

    older = {"method": "hmce", "seed": 0}  # recorded before these settings existed
    check_resume_config(older, dict(older, **ADDED_FIELDS), "run")  # off: the same run
    with pytest.raises(main.UserError, match="--sampler-option"):
        check_resume_config(older, dict(older, sampler_option=["samples_per_class=3"]), "run")
