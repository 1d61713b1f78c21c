"""Multi-GPU and multi-node hierarchical training with Lightning DDP.

Turn on ``gather_distributed=True`` in the loss and train with any DDP strategy. Every
rank then computes the loss of the *global* batch: its own samples are the anchors,
and the embeddings of all ranks are the contrast set.

What is gathered: the embeddings of both views AND the label paths ``[B, L]`` from
every rank (the embeddings with a gradient-preserving all-gather, the labels with a
plain all-gather), in the same rank order. Why the labels must travel with the
embeddings: positives are defined by label agreement across the whole global batch. A
sample on rank 0 is a level-``l`` positive of a sample on rank 1 when their label paths
agree down to level ``l``. Gathering only the embeddings and pairing them with the local
labels (the bug in the draft ``SupConLoss`` of Lightly's pull request #1877) would
compare each gathered embedding with the wrong sample's labels, silently training on
wrong positives. With both gathered, the loss on every rank equals the single-process
loss on the global batch, and so do the gradients after DDP's averaging; this script
prints the loss of every rank to show that they agree. Every rank needs the same batch
size: keep ``drop_last=True``.

Run on the CPU (2 processes over gloo, a few steps on tiny data)::

    python examples/distributed.py
    python examples/distributed.py --strategy ddp_spawn  # spawn instead of re-launching

One machine, 8 GPUs (NCCL)::

    python examples/distributed.py --accelerator gpu --devices 8 \\
        --batch-size 256 --num-samples 24000 --max-steps 2000

Two machines with 8 GPUs each. Lightning reads the cluster from the environment; run
on every node, with ``NODE_RANK=0`` on the node at ``MASTER_ADDR`` and ``NODE_RANK=1`` on
the other::

    MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 NODE_RANK=0 \\
        python examples/distributed.py --accelerator gpu --devices 8 --num-nodes 2

with torchrun (on each node, ``--node-rank`` 0 and 1)::

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 \\
        --master-addr 10.0.0.1 --master-port 29500 \\
        examples/distributed.py --accelerator gpu --devices 8 --num-nodes 2

or with SLURM (one task per GPU)::

    srun --nodes 2 --ntasks-per-node 8 --gpus-per-node 8 \\
        python examples/distributed.py --accelerator gpu --devices 8 --num-nodes 2

``--batch-size`` is per device, so the global batch is ``batch_size * devices *
num_nodes`` samples (twice as many embeddings, one per view). Consider
``--sync-batchnorm`` for ResNets, as is common for contrastive learning on many GPUs.
"""

from __future__ import annotations

import argparse
import math
import warnings

import pytorch_lightning as pl
import torch
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import Tensor
from torch.utils.data import DataLoader

from lightly_hmlc import HMLCLoss, create_backbone
from lightly_hmlc.data import ShapesDataset


class HierarchicalSimCLR(pl.LightningModule):
    def __init__(self, backbone: str, proj_dim: int, lr: float) -> None:
        super().__init__()
        self.backbone, feature_dim = create_backbone(backbone)
        self.projection_head = SimCLRProjectionHead(feature_dim, feature_dim, proj_dim)
        # The one change for DDP: gather embeddings and label paths from all ranks.
        self.criterion = HMLCLoss(loss_type="hmce", temperature=0.1, gather_distributed=True)
        # Only for the printout: the same loss on this rank's samples alone.
        self.local_criterion = HMLCLoss(loss_type="hmce", temperature=0.1)
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        z: Tensor = self.projection_head(self.backbone(x))
        return z

    def training_step(self, batch: tuple[list[Tensor], Tensor], batch_idx: int) -> Tensor:
        (x0, x1), labels = batch
        z0, z1 = self(x0), self(x1)
        loss: Tensor = self.criterion(z0, z1, labels)
        self.log("train_loss", loss, prog_bar=True)

        # Show what gathering does: one loss value on every rank (the global batch's),
        # while the local losses differ from rank to rank.
        with torch.no_grad():
            local = self.local_criterion(z0, z1, labels)
        gathered = self.all_gather(torch.stack([loss.detach(), local]))
        assert isinstance(gathered, Tensor)
        per_rank = gathered.reshape(-1, 2)
        if self.trainer.is_global_zero:
            world = per_rank.shape[0]
            with_gather = ", ".join(f"{v:.4f}" for v in per_rank[:, 0].tolist())
            local_only = ", ".join(f"{v:.4f}" for v in per_rank[:, 1].tolist())
            print(
                f"step {self.global_step}: {world} ranks x {labels.shape[0]} samples; "
                f"loss per rank with gather [{with_gather}], without [{local_only}]",
                flush=True,
            )
            if not torch.allclose(per_rank[:, 0], per_rank[0, 0], rtol=1e-4, atol=1e-5):
                raise RuntimeError("The gathered loss differs between ranks.")
        return loss

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            metric = self.trainer.callback_metrics.get("train_loss")
            value = float(metric) if metric is not None else math.nan
            print(f"final loss: {value:.5f}", flush=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main(args: argparse.Namespace) -> None:
    pl.seed_everything(args.seed, verbose=False)
    transform = SimCLRTransform(input_size=32, gaussian_blur=0.0)
    dataset = ShapesDataset(num_samples=args.num_samples, seed=args.seed, transform=transform)
    # Lightning adds a DistributedSampler; drop_last keeps batch sizes equal on all ranks.
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        persistent_workers=args.num_workers > 0,
    )
    model = HierarchicalSimCLR(args.backbone, args.proj_dim, args.lr)
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        sync_batchnorm=args.sync_batchnorm,
        max_steps=args.max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accelerator", default="cpu", help="cpu, gpu, ...")
    parser.add_argument("--devices", type=int, default=2, help="Processes per node.")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument(
        "--strategy",
        default="ddp",
        help="ddp (re-launches this script once per device; torchrun and SLURM too) or ddp_spawn.",
    )
    parser.add_argument("--sync-batchnorm", action="store_true")
    parser.add_argument("--backbone", default="resnet_tiny_cifar")
    parser.add_argument("--proj-dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="Per device.")
    parser.add_argument("--num-samples", type=int, default=96)
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


if __name__ == "__main__":
    # Tiny CPU runs: Lightning's hints about workers and logging intervals do not apply.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*log_every_n_steps.*")
    main(parse_args())
