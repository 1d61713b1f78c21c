"""Frozen-feature evaluation shared by every method of the benchmark suite.

The backbone is run once over the train and test sets (:func:`extract_features`); every
metric below reads those frozen features, at every level of the label hierarchy
(:func:`evaluate_features`).

Protocol (the same for every method, so that the numbers compare):

- **Linear probe.** Features are standardised with the mean and standard deviation of
  the *train* features (per dimension; a dimension with ``std < 1e-6`` is only centred),
  the same transform is applied to the test features. One linear layer per level, all
  levels trained at once as one ``nn.Linear`` with concatenated outputs and the sum of
  one cross-entropy per level (targets ``-1`` are ignored; a level with no known target
  in a batch adds 0). Zero-initialised weights (the problem is convex, so no random
  init is needed), AdamW (``lr=probe_lr``, ``weight_decay=probe_weight_decay``), a
  cosine schedule to 0 over all steps, ``probe_epochs`` epochs of shuffled mini-batches
  of ``probe_batch_size``, shuffling seeded by ``seed``; on the CPU it trains with one
  torch thread (its small matmuls gain nothing from more, and lose much on a busy
  machine). The test accuracy is measured once, with the weights of the **final**
  epoch: no early stopping, no maximum over epochs, no test data during training. Beside
  the accuracy, the balanced accuracy (recall averaged over the level's classes present;
  scikit-learn's ``balanced_accuracy_score``) shows what a long-tailed split's plain
  accuracy hides about its rare classes. If some leaves of the hierarchy sit above the
  deepest level, one more head over all leaves (targets: the leaf ids of complete
  label paths) is trained with the others and provides the "fine" predictions used for
  the hierarchical metrics; otherwise the deepest level's head is the leaf classifier.
- **kNN.** Weighted kNN of Wu et al. [0] as in Lightly's ``knn_predict``: cosine
  similarity between L2-normalised features, the ``knn_k`` most similar train samples
  vote with weight ``exp(sim / knn_temperature)``. At each level, train samples with an
  unknown label there are left out of the bank.
- **NMI.** k-means (scikit-learn, k-means++ init, ``random_state=seed``) with ``k`` the
  number of classes of the level, on the L2-normalised test features whose label at
  that level is known; NMI (arithmetic normalisation) against the true labels.
- **Separation** of the L2-normalised test features at every level, without a probe:
  the explained variance (between-class over total scatter) and the Fisher ratio of
  :func:`lightly_hmlc.metrics.level_separation`, and the silhouette (scikit-learn,
  cosine distance, on at most 2,000 samples drawn with ``seed``). **CPCC** (Zeng et al.
  [2], :func:`lightly_hmlc.metrics.cpcc`): the correlation between tree distances of the
  classes and the distances of their mean features.
- **Hierarchical metrics** (Bertinetto et al. [1]) of the fine probe: the accuracy at
  every level implied by its top-1 leaf prediction, the mistake severity (mean LCA
  height of its wrong top-1 predictions) and the hierarchical distance of its top-k
  (mean LCA height between the true leaf and each of the ``hdist_k`` best leaves).
  Test samples without a complete label path are left out.
- **Identification** (:func:`identification_matrix`), only for a model with per-level
  features (an encoder mapping an image to ``[L, D]``, one ``D``-vector per level, e.g.
  the masked features of the HMLC methods): per feature level ``l`` one linear probe of
  the protocol above, trained on level ``l``'s features alone, and its test accuracy at
  every level ``l'``; the ``L x L`` matrix ``M[l][l']`` (row: features of level ``l``,
  column: predicted level ``l'``). The **diagonal advantage** of level ``l'`` is
  ``M[l'][l']`` minus the mean of ``M[k][l']`` over ``k != l'``: how much better level
  ``l'`` is predicted from its own features than from the other levels' (positive: the
  level's own features carry its labels best). Reported per level and as their mean;
  undefined (left out, never 0) for a single level or a model without per-level
  features. Costs ``L`` more probes of ``D`` inputs.

- [0] Unsupervised Feature Learning via Non-Parametric Instance Discrimination, Wu et
  al., CVPR 2018, https://arxiv.org/abs/1805.01978
- [1] Making Better Mistakes, Bertinetto et al., CVPR 2020,
  https://arxiv.org/abs/1912.09393
- [2] Learning Structured Representations by Embedding Class Hierarchy, Zeng et al.,
  ICLR 2023, https://openreview.net/forum?id=7J-30ilaUZM

This module is benchmark code: it may import scikit-learn and matplotlib, and uses only
public names of ``lightly_hmlc``.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lightly_hmlc.hierarchy import LabelHierarchy
from lightly_hmlc.metrics import (
    cpcc,
    hierarchical_distance_at_k,
    implied_coarse_accuracy,
    leaf_ids_from_paths,
    level_separation,
    mistake_severity,
    per_level_accuracy,
)

__all__ = [
    "LinearProbe",
    "extract_features",
    "evaluate_features",
    "train_linear_probe",
    "per_level_balanced_accuracy",
    "knn_predict_levels",
    "format_metrics_table",
    "identification_matrix",
    "identification_metrics",
    "format_identification_matrix",
    "split_levels",
    "plot_embeddings",
    "plot_identification",
    "plot_training_curves",
]


# ---------------------------------------------------------------------- features
def extract_features(
    backbone: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Runs a frozen backbone once over a dataset (``progress``: a tqdm bar).

    The backbone runs in eval mode, under ``torch.no_grad`` and with autocast disabled
    (float32 features). Every module's train/eval flag, and the backbone's device, are
    restored afterwards. Outputs with more than two dimensions are flattened.

    Args:
        backbone: Maps an image batch to features ``[B, F]`` (or ``[B, ...]``).
        dataset: Yields ``(image_tensor, label_path)`` with ``label_path`` a ``[L]``
            integer tensor (e.g. ``target_transform=LabelPathTransform(...)``); further
            items are ignored.
        batch_size: Images per forward pass.
        num_workers: DataLoader workers.
        device: Where the backbone runs.

    Returns:
        ``(features [N, F] float32, label paths [N, L] int64)``, both on the CPU, in
        dataset order.

    Raises:
        ValueError: If the dataset is empty or yields a class index instead of a path.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    device = torch.device(device)
    modes = {module: module.training for module in backbone.modules()}
    param = next(backbone.parameters(), None)
    original_device = param.device if param is not None else None
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        drop_last=False,
        pin_memory=device.type == "cuda",
    )
    features: list[Tensor] = []
    paths: list[Tensor] = []
    try:
        backbone.to(device)
        backbone.eval()
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            for batch in tqdm(loader, desc="features", leave=False, disable=not progress):
                images, labels = batch[0], batch[1]
                if isinstance(labels, list | tuple):  # paths given as lists: L tensors [B]
                    labels = torch.stack([torch.as_tensor(level) for level in labels], dim=1)
                labels = torch.as_tensor(labels)
                if labels.dim() != 2 or labels.dtype.is_floating_point:
                    raise ValueError(
                        "The dataset must yield (image, label_path) with an integer label "
                        f"path [L]; got labels of shape {tuple(labels.shape)[1:]} and dtype "
                        f"{labels.dtype}. Use target_transform=LabelPathTransform(hierarchy, "
                        "dataset.classes)."
                    )
                out = backbone(images.to(device, non_blocking=True))
                features.append(out.flatten(1).float().cpu())
                paths.append(labels.long().cpu())
    finally:
        if original_device is not None:
            backbone.to(original_device)
        for module, training in modes.items():
            module.train(training)
    if not features:
        raise ValueError("The dataset is empty: nothing to extract features from.")
    return torch.cat(features), torch.cat(paths)


# ---------------------------------------------------------------------- linear probe
@dataclass
class LinearProbe:
    """A trained linear probe: standardisation plus one linear layer for all heads.

    Attributes:
        mean: Train feature mean ``[F]``.
        std: Train feature standard deviation ``[F]`` (1 where the feature is constant).
        linear: Linear layer with the concatenated outputs of all heads.
        head_sizes: Output size of each head: the levels, then the leaf head if any.
        leaf_head: Index of the head whose classes are the leaf ids.
        final_loss: Mean training loss of the last epoch.
    """

    mean: Tensor
    std: Tensor
    linear: nn.Linear
    head_sizes: list[int]
    leaf_head: int
    final_loss: float

    @torch.no_grad()
    def head_logits(self, features: Tensor, batch_size: int = 8192) -> list[Tensor]:
        """Logits of every head, ``[N, C_h]`` each."""
        device = self.mean.device
        outputs = []
        for start in range(0, features.shape[0], batch_size):
            x = features[start : start + batch_size].to(device).float()
            outputs.append(self.linear((x - self.mean) / self.std))
        logits = torch.cat(outputs) if outputs else torch.empty(0, sum(self.head_sizes))
        return list(logits.split(self.head_sizes, dim=1))

    def predict_paths(self, features: Tensor, num_levels: int) -> Tensor:
        """Top-1 class per level, ``[N, L]``."""
        heads = self.head_logits(features)[:num_levels]
        return torch.stack([logits.argmax(dim=1) for logits in heads], dim=1)


def _probe_targets(paths: Tensor, hierarchy: LabelHierarchy) -> tuple[Tensor, list[int], int]:
    """Per-head targets ``[N, H]``, the head sizes, and the index of the leaf head."""
    sizes = list(hierarchy.num_classes_per_level)
    num_levels = hierarchy.num_levels
    leaf_table = hierarchy.leaf_paths
    balanced = bool((leaf_table[:, -1] >= 0).all()) and sizes[-1] == len(hierarchy.leaves)
    if balanced:
        # Every leaf sits at the deepest level, whose ids then equal the leaf ids.
        return paths, sizes, num_levels - 1
    leaf_ids = leaf_ids_from_paths(paths, hierarchy)
    return torch.cat([paths, leaf_ids[:, None]], dim=1), [*sizes, len(hierarchy.leaves)], num_levels


def train_linear_probe(
    features: Tensor,
    paths: Tensor,
    hierarchy: LabelHierarchy,
    *,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    cpu_threads: int | None = 1,
    progress: bool = False,
) -> LinearProbe:
    """Trains the per-level linear probe of the module docstring's protocol.

    Args:
        features: Train features ``[N, F]``.
        paths: Train label paths ``[N, L]``, ``-1`` for unknown.
        hierarchy: The label hierarchy.
        epochs: Training epochs.
        lr: Peak AdamW learning rate (cosine-annealed to 0).
        weight_decay: AdamW (decoupled) weight decay.
        batch_size: Mini-batch size.
        seed: Seeds the shuffling (the weights start at zero).
        device: Where to train.
        progress: Show a tqdm bar over the epochs.
        cpu_threads: Torch threads while training on the CPU (restored afterwards);
            ``None`` keeps the current setting.

    Returns:
        The probe with the weights of the last epoch.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0 or weight_decay < 0:
        raise ValueError(
            f"Need epochs >= 1, batch_size >= 1, lr > 0 and weight_decay >= 0; got "
            f"epochs={epochs}, batch_size={batch_size}, lr={lr}, weight_decay={weight_decay}."
        )
    if cpu_threads is not None and cpu_threads < 1:
        raise ValueError(f"cpu_threads must be >= 1 or None (keep torch's), got {cpu_threads}.")
    device = torch.device(device)
    targets, sizes, leaf_head = _probe_targets(paths, hierarchy)
    x = features.to(device).float()
    y = targets.to(device)
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    x = (x - mean) / std
    linear = nn.Linear(x.shape[1], sum(sizes)).to(device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=weight_decay)
    num = x.shape[0]
    steps_per_epoch = math.ceil(num / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    # On the CPU, one thread: the mini-batch matmuls are too small to gain from more,
    # and on a busy machine extra BLAS threads made the probe ~10x slower (measured).
    threads = torch.get_num_threads()
    if device.type == "cpu" and cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    try:
        final_loss = _fit(
            linear, optimizer, scheduler, x, y, sizes, epochs, batch_size, seed, progress
        )
    finally:
        torch.set_num_threads(threads)
    linear.eval()
    return LinearProbe(mean, std, linear, sizes, leaf_head, final_loss)


def _fit(
    linear: nn.Linear,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    x: Tensor,
    y: Tensor,
    sizes: list[int],
    epochs: int,
    batch_size: int,
    seed: int,
    progress: bool = False,
) -> float:
    """The probe's training loop; returns the mean loss of the last epoch."""
    num = x.shape[0]
    generator = torch.Generator().manual_seed(seed)
    offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    final_loss = math.nan
    for _ in tqdm(range(epochs), desc="linear probe", leave=False, disable=not progress):
        order = torch.randperm(num, generator=generator).to(x.device)
        epoch_loss = torch.zeros((), device=x.device)
        for start in range(0, num, batch_size):
            idx = order[start : start + batch_size]
            logits = linear(x[idx])
            batch_targets = y[idx]
            loss = logits.new_zeros(())
            for head in range(len(sizes)):
                target = batch_targets[:, head]
                # Mean over the known targets; a head with none adds 0, not NaN.
                known = (target >= 0).sum().clamp(min=1)
                head_logits = logits[:, offsets[head] : offsets[head + 1]]
                loss = (
                    loss
                    + F.cross_entropy(head_logits, target, ignore_index=-1, reduction="sum") / known
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += loss.detach() * idx.numel()
        final_loss = float(epoch_loss) / num
    return final_loss


# ---------------------------------------------------------------------- kNN
@torch.no_grad()
def knn_predict_levels(
    train_features: Tensor,
    train_paths: Tensor,
    test_features: Tensor,
    num_classes_per_level: list[int],
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 512,
) -> Tensor:
    """Weighted-kNN top-1 prediction at every level, ``[N_test, L]``.

    Lightly's ``knn_predict`` (the kNN of Wu et al.: cosine similarity of L2-normalised
    features, the ``k`` nearest train samples vote with ``exp(sim / temperature)``),
    applied per level. At a level, train samples with label ``-1`` are left out of the
    bank; a level without any known train label predicts ``-1``.
    """
    if k < 1 or not temperature > 0:
        raise ValueError(f"Need k >= 1 and temperature > 0, got k={k}, temperature={temperature}.")
    bank = F.normalize(train_features.float(), dim=1)
    queries = F.normalize(test_features.float().to(bank.device), dim=1)
    labels = train_paths.to(bank.device)
    preds = torch.full((queries.shape[0], len(num_classes_per_level)), -1, dtype=torch.long)
    for level, num_classes in enumerate(num_classes_per_level):
        known = labels[:, level] >= 0
        num_known = int(known.sum())
        if num_known == 0:
            continue
        level_bank = bank[known].T.contiguous()  # knn_predict takes the bank as [D, N]
        level_labels = labels[known, level]
        for start in range(0, queries.shape[0], chunk_size):
            ranked = knn_predict(
                queries[start : start + chunk_size],
                level_bank,
                level_labels,
                num_classes,
                knn_k=min(k, num_known),
                knn_t=temperature,
            )
            preds[start : start + ranked.shape[0], level] = ranked[:, 0].cpu()
    return preds


# ---------------------------------------------------------------------- NMI
def _kmeans_nmi(features: Tensor, labels: Tensor, num_clusters: int, seed: int) -> float:
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    known = labels >= 0
    x = F.normalize(features[known].float(), dim=1).cpu().numpy()
    y = labels[known].cpu().numpy()
    if x.shape[0] == 0:
        warnings.warn("No test sample has a known label at a level: its NMI is NaN.", stacklevel=3)
        return math.nan
    k = min(num_clusters, x.shape[0])
    kmeans = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x)
    return float(normalized_mutual_info_score(y, kmeans.labels_))


# ---------------------------------------------------------------------- all metrics
def evaluate_features(
    train_features: Tensor,
    train_paths: Tensor,
    test_features: Tensor,
    test_paths: Tensor,
    hierarchy: LabelHierarchy,
    *,
    probe_epochs: int = 100,
    probe_lr: float = 1e-3,
    probe_batch_size: int = 256,
    probe_weight_decay: float = 1e-4,
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    hdist_k: int = 5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, float]:
    """All frozen-feature metrics of the protocol in the module docstring.

    Args:
        train_features: ``[N_train, F]`` features of the probe / kNN training set.
        train_paths: ``[N_train, L]`` label paths, ``-1`` for unknown.
        test_features: ``[N_test, F]``.
        test_paths: ``[N_test, L]``.
        hierarchy: The label hierarchy of the paths.
        probe_epochs: Linear-probe epochs.
        probe_lr: Peak AdamW learning rate of the probe.
        probe_batch_size: Probe mini-batch size.
        probe_weight_decay: Probe AdamW weight decay.
        knn_k: Neighbours of the weighted kNN.
        knn_temperature: kNN vote temperature.
        hdist_k: ``k`` of the hierarchical distance at k (at most the number of leaves).
        seed: Seeds the probe's shuffling and k-means.
        device: Where the probe and the kNN run.
        progress: Show a tqdm bar over the probe's epochs.

    Returns:
        Flat dict: ``level{l}/linear_acc``, ``level{l}/balanced_linear_acc`` (the
        probe's recall averaged over the level's classes present,
        :func:`per_level_balanced_accuracy`), ``level{l}/knn_acc``, ``level{l}/nmi`` for
        every level, ``hier/implied_acc_level{l}``, ``hier/mistake_severity``,
        ``hier/hdist@{hdist_k}``, and ``probe/train_seconds``, ``probe/final_loss``,
        ``knn/seconds``, ``nmi/seconds``. Accuracies and NMI are fractions in [0, 1].

    Raises:
        ValueError: If shapes or label values do not fit the hierarchy.
    """
    num_levels = hierarchy.num_levels
    sizes = hierarchy.num_classes_per_level
    _check_split(train_features, train_paths, hierarchy, "train")
    _check_split(test_features, test_paths, hierarchy, "test")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"Train and test features differ in dimension ({train_features.shape[1]} vs "
            f"{test_features.shape[1]}): extract both with the same backbone."
        )
    num_leaves = len(hierarchy.leaves)
    if not 1 <= hdist_k <= num_leaves:
        raise ValueError(
            f"hdist_k must be in 1..{num_leaves} (the number of leaves), got {hdist_k}."
        )
    results: dict[str, float] = {}

    begin = time.perf_counter()
    probe = train_linear_probe(
        train_features,
        train_paths,
        hierarchy,
        epochs=probe_epochs,
        lr=probe_lr,
        weight_decay=probe_weight_decay,
        batch_size=probe_batch_size,
        seed=seed,
        device=device,
        progress=progress,
    )
    results["probe/train_seconds"] = time.perf_counter() - begin
    results["probe/final_loss"] = probe.final_loss
    heads = [logits.cpu() for logits in probe.head_logits(test_features)]
    linear_pred = torch.stack([logits.argmax(dim=1) for logits in heads[:num_levels]], dim=1)
    linear_acc = per_level_accuracy(linear_pred, test_paths)
    balanced_acc = per_level_balanced_accuracy(linear_pred, test_paths)

    begin = time.perf_counter()
    knn_pred = knn_predict_levels(
        train_features.to(device),
        train_paths,
        test_features,
        sizes,
        k=knn_k,
        temperature=knn_temperature,
    )
    knn_acc = per_level_accuracy(knn_pred, test_paths)
    results["knn/seconds"] = time.perf_counter() - begin

    begin = time.perf_counter()
    nmi = [
        _kmeans_nmi(test_features, test_paths[:, lvl], sizes[lvl], seed)
        for lvl in range(num_levels)
    ]
    results["nmi/seconds"] = time.perf_counter() - begin

    for level in range(num_levels):
        results[f"level{level}/linear_acc"] = float(linear_acc[level])
        results[f"level{level}/balanced_linear_acc"] = balanced_acc[level]
        results[f"level{level}/knn_acc"] = float(knn_acc[level])
        results[f"level{level}/nmi"] = nmi[level]
    results.update(separation_metrics(test_features, test_paths, seed))

    leaf_logits = heads[probe.leaf_head]
    true_leaf = leaf_ids_from_paths(test_paths, hierarchy)
    complete = true_leaf >= 0
    top1 = leaf_logits.argmax(dim=1)
    implied = implied_coarse_accuracy(top1[complete], test_paths[complete], hierarchy)
    for level in range(num_levels):
        results[f"hier/implied_acc_level{level}"] = float(implied[level])
    results["hier/mistake_severity"] = mistake_severity(top1, true_leaf, hierarchy)
    topk = leaf_logits.topk(hdist_k, dim=1).indices
    results[f"hier/hdist@{hdist_k}"] = hierarchical_distance_at_k(topk, true_leaf, hierarchy)
    return results


def split_levels(features: Tensor, num_levels: int) -> Tensor:
    """Per-level features ``[N, L, D]`` from their flattened form ``[N, L * D]``.

    :func:`extract_features` flattens an encoder's ``[B, L, D]`` output level after level;
    this undoes it.

    Examples:
        >>> split_levels(torch.arange(6.0).reshape(1, 6), 2).tolist()
        [[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]]
    """
    if num_levels < 1 or features.dim() != 2 or features.shape[1] % num_levels != 0:
        raise ValueError(
            f"Cannot split features of shape {tuple(features.shape)} into {num_levels} "
            "levels: the per-level encoder must return [B, L, D] with L the hierarchy's "
            "number of levels."
        )
    return features.reshape(features.shape[0], num_levels, -1)


def identification_matrix(
    train_level_features: Tensor,
    train_paths: Tensor,
    test_level_features: Tensor,
    test_paths: Tensor,
    hierarchy: LabelHierarchy,
    *,
    probe_epochs: int = 100,
    probe_lr: float = 1e-3,
    probe_batch_size: int = 256,
    probe_weight_decay: float = 1e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Tensor:
    """What each level's own features carry: the ``L x L`` probe accuracy matrix.

    For every feature level ``l``, a linear probe of the protocol
    (:func:`train_linear_probe`: one head per level, trained at once) on level ``l``'s
    features alone; its test accuracy at every level ``l'`` is ``M[l][l']``.

    Args:
        train_level_features: ``[N_train, L, D]`` per-level features.
        train_paths: ``[N_train, L]`` label paths, ``-1`` for unknown.
        test_level_features: ``[N_test, L, D]``.
        test_paths: ``[N_test, L]``.
        hierarchy: The label hierarchy (``L`` levels).
        probe_epochs, probe_lr, probe_batch_size, probe_weight_decay, seed, device,
            progress: As in :func:`evaluate_features`.

    Returns:
        ``M`` ``[L, L]`` float64 on the CPU: row ``l`` the features of level ``l``,
        column ``l'`` the predicted level; accuracies as fractions in [0, 1] (``NaN`` at
        a level without a known test label).

    Raises:
        ValueError: If shapes or label values do not fit the hierarchy.
    """
    num_levels = hierarchy.num_levels
    for name, level_features in (("train", train_level_features), ("test", test_level_features)):
        if level_features.dim() != 3 or level_features.shape[1] != num_levels:
            raise ValueError(
                f"{name}_level_features must be [N, L, D] with L = {num_levels} (the "
                f"hierarchy's levels), got shape {tuple(level_features.shape)}."
            )
    if train_level_features.shape[2] != test_level_features.shape[2]:
        raise ValueError(
            f"Train and test per-level features differ in dimension "
            f"({train_level_features.shape[2]} vs {test_level_features.shape[2]})."
        )
    _check_split(train_level_features[:, 0], train_paths, hierarchy, "train")
    _check_split(test_level_features[:, 0], test_paths, hierarchy, "test")
    rows = []
    for level in range(num_levels):
        probe = train_linear_probe(
            train_level_features[:, level],
            train_paths,
            hierarchy,
            epochs=probe_epochs,
            lr=probe_lr,
            weight_decay=probe_weight_decay,
            batch_size=probe_batch_size,
            seed=seed,
            device=device,
            progress=progress,
        )
        pred = probe.predict_paths(test_level_features[:, level], num_levels).cpu()
        rows.append(per_level_accuracy(pred, test_paths).double())
    return torch.stack(rows)


def identification_metrics(matrix: Tensor) -> dict[str, float]:
    """The diagonal advantage of every level and their mean, from
    :func:`identification_matrix`'s ``M``.

    The advantage of level ``l'`` is ``M[l'][l']`` minus the mean of ``M[k][l']`` over
    ``k != l'`` (a fraction, as ``M``). Keys ``ident/advantage_level{l}`` and
    ``ident/advantage_mean``; an empty dict for a single level (undefined there).

    Examples:
        Level 0 is predicted at 0.9 from its own features, at 0.5 from level 1's:
        advantage 0.4; level 1 at 0.8 against 0.3: 0.5.

        >>> scores = identification_metrics(torch.tensor([[0.9, 0.3], [0.5, 0.8]]))
        >>> [round(scores[f"ident/advantage_{k}"], 3) for k in ("level0", "level1", "mean")]
        [0.4, 0.5, 0.45]
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"Need a square [L, L] matrix, got shape {tuple(matrix.shape)}.")
    num_levels = matrix.shape[0]
    if num_levels < 2:
        return {}
    m = matrix.double()
    diagonal = m.diagonal()
    off_mean = (m.sum(dim=0) - diagonal) / (num_levels - 1)
    advantage = (diagonal - off_mean).tolist()
    results = {f"ident/advantage_level{level}": a for level, a in enumerate(advantage)}
    results["ident/advantage_mean"] = sum(advantage) / num_levels
    return results


def per_level_balanced_accuracy(pred_paths: Tensor, true_paths: Tensor) -> list[float]:
    """Per level, the recall averaged over the classes that the split holds.

    Where the classes of a level are imbalanced (a long-tailed split), plain accuracy
    weighs each class by its share and can hide what happens to the rare ones; this
    weighs every class present equally. On a balanced split the two agree. Samples with
    an unknown true label (``-1``) at a level are left out there; a level with none known
    gives ``NaN``.

    Examples:
        Three samples of class 0 and one of class 1, all predicted 0: plain accuracy
        0.75, balanced 0.5 (class 0's recall 1, class 1's 0).

        >>> true = torch.tensor([[0], [0], [0], [1]])
        >>> per_level_balanced_accuracy(torch.zeros(4, 1, dtype=torch.long), true)
        [0.5]
    """
    from sklearn.metrics import balanced_accuracy_score

    scores = []
    for level in range(true_paths.shape[1]):
        known = true_paths[:, level] >= 0
        if not bool(known.any()):
            scores.append(math.nan)
            continue
        truth = true_paths[known, level].numpy()
        guess = pred_paths[known, level].numpy()
        scores.append(float(balanced_accuracy_score(truth, guess)))
    return scores


def separation_metrics(features: Tensor, paths: Tensor, seed: int) -> dict[str, float]:
    """Per-level explained variance, Fisher ratio and silhouette, and the CPCC.

    A metric that is undefined for these labels (a level with one class, a single
    level for the CPCC) is left out rather than reported as NaN.
    """
    from sklearn.metrics import silhouette_score

    results: dict[str, float] = {}
    begin = time.perf_counter()
    try:
        separation = level_separation(features, paths)
    except ValueError:
        separation = None
    x = F.normalize(features.double(), dim=1).numpy()
    for level in range(paths.shape[1]):
        if separation is not None:
            results[f"level{level}/explained_var"] = float(separation.explained_variance[level])
            results[f"level{level}/fisher_ratio"] = float(separation.fisher_ratio[level])
        known = (paths[:, : level + 1] >= 0).all(dim=1)
        _, ids = torch.unique(paths[known, : level + 1], dim=0, return_inverse=True)
        num_classes = int(ids.max()) + 1 if ids.numel() else 0
        if 2 <= num_classes < int(known.sum()):
            results[f"level{level}/silhouette"] = float(
                silhouette_score(
                    x[known.numpy()],
                    ids.numpy(),
                    metric="cosine",
                    sample_size=min(2000, int(known.sum())),
                    random_state=seed,
                )
            )
    try:
        results["hier/cpcc"] = cpcc(features, paths)
    except ValueError:
        pass
    results["separation/seconds"] = time.perf_counter() - begin
    return results


def _check_split(features: Tensor, paths: Tensor, hierarchy: LabelHierarchy, name: str) -> None:
    if features.dim() != 2 or not features.dtype.is_floating_point:
        raise ValueError(
            f"{name}_features must be a float [N, F] tensor, got shape "
            f"{tuple(features.shape)} and dtype {features.dtype}."
        )
    if paths.dim() != 2 or paths.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name}_paths must be [N, L] with N = {features.shape[0]} (rows of "
            f"{name}_features), got {tuple(paths.shape)}."
        )
    if paths.shape[1] != hierarchy.num_levels:
        raise ValueError(
            f"{name}_paths have {paths.shape[1]} levels but the hierarchy has "
            f"{hierarchy.num_levels}: label the data with this hierarchy."
        )
    if features.shape[0] == 0:
        raise ValueError(f"The {name} split is empty.")
    for level, num_classes in enumerate(hierarchy.num_classes_per_level):
        column = paths[:, level]
        if bool(((column < -1) | (column >= num_classes)).any()):
            raise ValueError(
                f"{name}_paths at level {level} hold ids outside -1..{num_classes - 1}: "
                "label paths must come from this hierarchy."
            )


# ---------------------------------------------------------------------- reporting
_LEVEL_KEY = re.compile(r"^level(\d+)/(.+)$")
_IMPLIED_KEY = re.compile(r"^hier/implied_acc_level(\d+)$")
_IDENT_KEY = re.compile(r"^ident/advantage_level(\d+)$")
_METRIC_ORDER = {"linear_acc": 0, "balanced_linear_acc": 1, "knn_acc": 2, "nmi": 3}


def _in_percent(key: str) -> bool:
    """Accuracies, NMI and the identification advantages (differences of accuracies)."""
    return "acc" in key or key.endswith("/nmi") or key.startswith("ident/advantage")


def _column_order(key: str) -> tuple[int, int, int, str]:
    match = _LEVEL_KEY.match(key)
    if match:
        return (0, int(match.group(1)), _METRIC_ORDER.get(match.group(2), 9), key)
    match = _IMPLIED_KEY.match(key)
    if match:
        return (1, int(match.group(1)), 0, key)
    if key == "hier/mistake_severity":
        return (2, 0, 0, key)
    if key.startswith("hier/"):
        return (3, 0, 0, key)
    match = _IDENT_KEY.match(key)
    if match:
        return (4, int(match.group(1)), 0, key)
    if key == "ident/advantage_mean":
        return (5, 0, 0, key)
    return (6, 0, 0, key)


def _column_title(key: str, level_names: list[str] | None) -> str:
    def level_name(level: int) -> str:
        if level_names is not None and level < len(level_names):
            return level_names[level]
        return f"L{level}"

    match = _LEVEL_KEY.match(key)
    if match:
        metric = match.group(2).replace("_acc", " acc").replace("_", " ")
        return f"{level_name(int(match.group(1)))} {metric}"
    match = _IMPLIED_KEY.match(key)
    if match:
        return f"{level_name(int(match.group(1)))} implied acc"
    match = _IDENT_KEY.match(key)
    if match:
        return f"{level_name(int(match.group(1)))} ident advantage"
    if key == "ident/advantage_mean":
        return "mean ident advantage"
    return key.removeprefix("hier/").replace("_", " ")


def _format_value(key: str, value: float | None) -> str:
    if value is None:
        return "–"
    if math.isnan(value):
        return "nan"
    if _in_percent(key):
        return f"{100 * value:.2f}"
    if "seconds" in key:
        return f"{value:.1f}"
    return f"{value:.3f}"


def format_metrics_table(
    results: dict[str, dict[str, float]], hierarchy_level_names: list[str] | None = None
) -> str:
    """A markdown table with one row per method and one column per metric.

    Accuracies, NMI and identification advantages are shown in percent (two decimals),
    seconds with one decimal, other values with three. Columns follow the order level by
    level (linear, kNN, NMI), then implied accuracies, mistake severity, hierarchical
    distance, the identification advantages and the rest; a method without a metric
    shows ``–``.

    Args:
        results: ``{method: evaluate_features(...)}``.
        hierarchy_level_names: Column prefixes per level, e.g. ``["coarse", "fine"]``
            (default ``L0``, ``L1``, ...).

    Examples:
        >>> print(format_metrics_table({"supcon": {"level0/linear_acc": 0.5}}, ["coarse"]))
        | method | coarse linear acc (%) |
        |---|---|
        | supcon | 50.00 |
    """
    keys = sorted({key for metrics in results.values() for key in metrics}, key=_column_order)
    titles = []
    for key in keys:
        title = _column_title(key, hierarchy_level_names)
        if _in_percent(key):
            title += " (%)"
        titles.append(title)
    lines = [
        "| " + " | ".join(["method", *titles]) + " |",
        "|" + "---|" * (len(keys) + 1),
    ]
    for method, metrics in results.items():
        cells = [method.replace("|", "\\|")]
        cells += [_format_value(key, metrics.get(key)) for key in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _class_colours(num_classes: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    if num_classes <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(num_classes)]
    if num_classes <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(num_classes)]
    cmap = colormaps["turbo"]
    return [cmap(i / max(num_classes - 1, 1)) for i in range(num_classes)]


def plot_embeddings(
    features: Tensor,
    paths: Tensor,
    hierarchy: LabelHierarchy,
    path: str | Path,
    max_points: int = 2000,
    seed: int = 0,
    method: str = "pca",
    level_names: list[str] | None = None,
) -> None:
    """Writes a PNG of a 2-D embedding, one subplot per level coloured by its classes.

    Args:
        features: ``[N, F]`` features.
        paths: ``[N, L]`` label paths (``-1`` drawn in grey).
        hierarchy: Gives the number of classes and, up to 20 classes, the legend names.
        path: The PNG to write (parent folders are created).
        max_points: A seeded random subset of at most this many points is drawn.
        seed: Seeds the subset and t-SNE.
        method: ``"pca"`` (top-2 principal components) or ``"tsne"`` (scikit-learn,
            slower).
        level_names: Subplot titles per level (default ``level 0``, ...).
    """
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}.")
    if features.dim() != 2 or paths.dim() != 2 or features.shape[0] != paths.shape[0]:
        raise ValueError(
            f"Need features [N, F] and paths [N, L] with the same N, got "
            f"{tuple(features.shape)} and {tuple(paths.shape)}."
        )
    if features.shape[0] < 2:
        raise ValueError("Need at least 2 points to draw an embedding.")
    from matplotlib.figure import Figure

    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(features.shape[0], generator=generator)[:max_points]
    x = features[keep].detach().float().cpu()
    labels = paths[keep].cpu()
    if method == "pca":
        x = x - x.mean(dim=0)
        _, _, v = torch.linalg.svd(x, full_matrices=False)
        points = (x @ v[:2].T).numpy()
        if points.shape[1] < 2:  # one-dimensional features
            points = torch.cat([torch.as_tensor(points), torch.zeros(len(points), 1)], 1).numpy()
    else:
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (x.shape[0] - 1) / 3)
        points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            x.numpy()
        )
    num_levels = hierarchy.num_levels
    figure = Figure(figsize=(5 * num_levels, 5), layout="constrained")
    axes = figure.subplots(1, num_levels, squeeze=False)[0]
    for level, ax in enumerate(axes):
        num_classes = hierarchy.num_classes_per_level[level]
        colours = _class_colours(num_classes)
        column = labels[:, level]
        unknown = column < 0
        if bool(unknown.any()):
            ax.scatter(*points[unknown.numpy()].T, s=4, c="lightgrey", label="unknown")
        for class_id in range(num_classes):
            mask = (column == class_id).numpy()
            if mask.any():
                name = hierarchy.id_to_name(level, class_id)
                ax.scatter(*points[mask].T, s=4, color=colours[class_id], label=name)
        title = level_names[level] if level_names and level < len(level_names) else f"level {level}"
        ax.set_title(f"{title} ({num_classes} classes, {method.upper()})")
        ax.set_xticks([])
        ax.set_yticks([])
        if num_classes <= 20:
            ax.legend(fontsize=6, markerscale=2, loc="best")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)


def format_identification_matrix(matrix: Tensor, level_names: list[str] | None = None) -> str:
    """:func:`identification_matrix`'s ``M`` as a markdown table, in percent.

    Examples:
        >>> print(format_identification_matrix(torch.tensor([[0.9, 0.3], [0.5, 0.8]])))
        | features of level / predicted level | L0 | L1 |
        |---|---|---|
        | L0 | 90.00 | 30.00 |
        | L1 | 50.00 | 80.00 |
    """
    names = [_level_label(level, level_names) for level in range(matrix.shape[1])]
    lines = [
        "| features of level / predicted level | " + " | ".join(names) + " |",
        "|" + "---|" * (len(names) + 1),
    ]
    for level, row in enumerate(matrix.tolist()):
        cells = [_format_value("ident/acc", value) for value in row]
        lines.append(f"| {_level_label(level, level_names)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _level_label(level: int, level_names: list[str] | None) -> str:
    if level_names is not None and level < len(level_names):
        return level_names[level]
    return f"L{level}"


def plot_identification(
    matrix: Tensor, path: str | Path, level_names: list[str] | None = None
) -> None:
    """Writes a PNG of :func:`identification_matrix`'s ``M``: rows the features of each
    level, columns the predicted level, each cell's accuracy written in it (in %).

    Args:
        matrix: ``[L, L]`` accuracies as fractions.
        path: The PNG to write (parent folders are created).
        level_names: Tick labels per level (default ``L0``, ``L1``, ...).
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(f"Need a square [L, L] matrix, got shape {tuple(matrix.shape)}.")
    from matplotlib.figure import Figure

    values = 100 * matrix.detach().double().cpu()
    num_levels = values.shape[0]
    names = [_level_label(level, level_names) for level in range(num_levels)]
    size = 1.6 + 1.1 * num_levels
    figure = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(values.numpy(), cmap="viridis", vmin=0.0, vmax=100.0)
    for row in range(num_levels):
        for col in range(num_levels):
            value = float(values[row, col])
            text = "nan" if math.isnan(value) else f"{value:.1f}"
            colour = "black" if not math.isnan(value) and value > 60 else "white"
            ax.text(col, row, text, ha="center", va="center", color=colour, fontsize=10)
    ax.set_xticks(range(num_levels), names)
    ax.set_yticks(range(num_levels), names)
    ax.set_xlabel("predicted level")
    ax.set_ylabel("features of level")
    ax.set_title("identification: probe test accuracy (%)")
    figure.colorbar(image, ax=ax, shrink=0.8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)


def plot_training_curves(history: dict[str, list[float]], path: str | Path) -> None:
    """Writes a PNG with one subplot per curve of ``history`` (e.g. ``train_loss``).

    Args:
        history: Curve name -> values per epoch (or step); empty curves are skipped.
        path: The PNG to write (parent folders are created).

    Raises:
        ValueError: If every curve is empty.
    """
    curves = {name: list(values) for name, values in history.items() if len(values) > 0}
    if not curves:
        raise ValueError("history has no values to plot: record at least one epoch.")
    from matplotlib.figure import Figure

    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    figure = Figure(figsize=(4 * cols, 3 * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).flatten()
    for ax, (name, values) in zip(axes, curves.items(), strict=False):
        ax.plot(range(1, len(values) + 1), values, marker="." if len(values) < 50 else None)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes[len(curves) :]:
        ax.set_visible(False)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
