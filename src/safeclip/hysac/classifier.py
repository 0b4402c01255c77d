"""An NSFW classifier with a defined label space: safe (0) vs unsafe (1) items, one modality at a time.

HySAC reports NSFW classification (its Table 5) without a script (its issue #6). Here the protocol is
explicit:

- **score**: for a HySAC model, the item's distance to the origin (unsafe content lies farther out);
  for a Euclidean model (every other method), the baseline cosine similarity to the *unsafe
  prototype* (the mean unit embedding of the validation split's unsafe items of that modality);
- **threshold**: chosen on the validation split as the one with the highest accuracy (items with
  score > threshold are called unsafe; ties between thresholds go to the smallest);
- **metrics** on the test split, in percent: accuracy, FPR (safe items called unsafe / safe items),
  FNR (unsafe items called safe / unsafe items) and AUROC (threshold-free; ties count half).

    from safeclip.hysac.classifier import classify
    out = classify(val_scores, val_labels, test_scores, test_labels)  # {"accuracy", "FPR", "FNR", "AUROC", "threshold"}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from safeclip import hyperbolic as H

Tensor = torch.Tensor

PROTOCOL = ("NSFW classification per modality: safe vs unsafe items of the test split; score = distance to the "
            "origin (HySAC) or cosine to the validation unsafe prototype (Euclidean models); threshold = best "
            "validation accuracy; accuracy / FPR / FNR / AUROC in percent")


def _check(scores: Tensor, labels: Tensor, name: str) -> tuple[Tensor, Tensor]:
    scores, labels = torch.as_tensor(scores).double().flatten(), torch.as_tensor(labels).long().flatten()
    if scores.shape != labels.shape:
        raise ValueError(f"{name}: {scores.numel()} scores but {labels.numel()} labels")
    if not ((labels == 0).any() and (labels == 1).any()) or ((labels != 0) & (labels != 1)).any():
        raise ValueError(f"{name}: labels must be 0 (safe) and 1 (unsafe), with both present")
    return scores, labels


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve in percent: P(score of an unsafe item > score of a safe one), ties count half."""
    scores, labels = _check(scores, labels, "auroc")
    ranks = torch.empty_like(scores)
    order = scores.argsort()
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores.unique():  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = int(labels.sum()), int((labels == 0).sum())
    u = ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2  # Mann-Whitney U
    return float(u / (n_pos * n_neg) * 100)


def rates(scores: Tensor, labels: Tensor, threshold: float) -> dict[str, float]:
    """Accuracy, FPR and FNR in percent when ``score > threshold`` means unsafe."""
    scores, labels = _check(scores, labels, "rates")
    predicted = (scores > threshold).long()
    safe, unsafe = labels == 0, labels == 1
    return {"accuracy": float((predicted == labels).double().mean() * 100),
            "FPR": float((predicted[safe] == 1).double().mean() * 100),
            "FNR": float((predicted[unsafe] == 0).double().mean() * 100)}


def choose_threshold(scores: Tensor, labels: Tensor) -> float:
    """The threshold with the best accuracy on ``scores`` (candidates: midpoints of sorted scores and both ends)."""
    scores, labels = _check(scores, labels, "choose_threshold")
    values = scores.unique()  # sorted
    candidates = torch.cat([values[:1] - 1, (values[1:] + values[:-1]) / 2, values[-1:] + 1])
    accuracy = ((scores[None, :] > candidates[:, None]).long() == labels[None, :]).double().mean(dim=1)  # (C,)
    return float(candidates[int(accuracy.argmax())])


def classify(val_scores: Tensor, val_labels: Tensor, test_scores: Tensor, test_labels: Tensor) -> dict[str, float]:
    """Threshold from validation, metrics on test: ``{"accuracy", "FPR", "FNR", "AUROC", "threshold"}``."""
    threshold = choose_threshold(val_scores, val_labels)
    return {**rates(test_scores, test_labels, threshold), "AUROC": auroc(test_scores, test_labels), "threshold": threshold}


def split_items(embeddings: dict[str, Tensor], modality: str) -> tuple[Tensor, Tensor]:
    """Safe and unsafe items of ``modality`` ("text" / "image") stacked: ``(2N, D)`` and labels ``(2N,)``."""
    safe, unsafe = embeddings[f"safe_{modality}"], embeddings[f"unsafe_{modality}"]
    labels = torch.cat([torch.zeros(len(safe), dtype=torch.long), torch.ones(len(unsafe), dtype=torch.long)])
    return torch.cat([safe, unsafe]), labels


def root_distance_scores(items: Tensor, curv: float) -> Tensor:
    """HySAC's score: distance to the origin of hyperboloid points ``(N, D)``."""
    return H.origin_distance(items.double(), curv)


def prototype_scores(items: Tensor, unsafe_reference: Tensor) -> Tensor:
    """Euclidean baseline: cosine of each item ``(N, D)`` to the mean unit unsafe reference embedding."""
    prototype = F.normalize(F.normalize(unsafe_reference.double(), dim=-1).mean(dim=0), dim=0)
    return F.normalize(items.double(), dim=-1) @ prototype


def nsfw_classification(val: dict[str, Tensor], test: dict[str, Tensor], *, curv: float | None = None) -> dict[str, dict]:
    """Per modality present in both splits: ``{"text": metrics, "image": metrics}``.

    ``curv`` given: the embeddings are HySAC hyperboloid points, scored by root distance; otherwise the
    unsafe-prototype baseline, with the prototype taken from ``val``.
    """
    out = {}
    for modality in ("text", "image"):
        if not all(f"{s}_{modality}" in split for s in ("safe", "unsafe") for split in (val, test)):
            continue
        (val_items, val_labels), (test_items, test_labels) = split_items(val, modality), split_items(test, modality)
        if curv is not None:
            val_scores, test_scores = root_distance_scores(val_items, curv), root_distance_scores(test_items, curv)
        else:
            reference = val[f"unsafe_{modality}"]
            val_scores, test_scores = prototype_scores(val_items, reference), prototype_scores(test_items, reference)
        out[modality] = classify(val_scores, val_labels, test_scores, test_labels)
    return out


def classification_group(val: dict[str, Tensor], test: dict[str, Tensor], *, curv: float | None = None) -> dict[str, float]:
    """:func:`nsfw_classification` as one flat metric group, percentages only: ``{"text accuracy": .., "image AUROC": ..}``."""
    return {f"{modality} {key}": value for modality, entry in nsfw_classification(val, test, curv=curv).items()
            for key, value in entry.items() if key != "threshold"}
