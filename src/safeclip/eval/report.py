"""Reporting shared by every evaluation: the one Markdown table writer and the one seed summary.

    from safeclip.eval.report import markdown_table, summarize_seeds
    print(markdown_table("model", ["T->V R@1", "NSFW@1"], {"base": [36.8, 99.5], "safe-clip": [35.9, 12.0]}))
    summary = summarize_seeds({0: {"base": {"T->V": {"R@1": 10.0}}}, 1: {"base": {"T->V": {"R@1": 20.0}}}})
    # {"base": {"T->V": {"R@1": {"mean": 15.0, "std": 5.0}}}}

A cell is a number (one decimal by default), a ``{"mean", "std"}`` summary (``"15.0 ± 5.0"``; with ``"n"``, a
summary over fewer seeds than the run had: ``"15.0 ± 5.0 (n=2)"``), a string (written as it is) or None (``"-"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def format_cell(value, digits: int = 1) -> str:
    """One table cell: see the module docstring."""
    if isinstance(value, Mapping):
        seeds = f" (n={value['n']})" if "n" in value else ""
        return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}{seeds}"
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(first: str, columns: Sequence[str], rows: Mapping[str, Sequence], *, digits: int = 1) -> str:
    """A Markdown table: a left-aligned label column headed ``first``, right-aligned ``columns``.

    ``rows`` maps each row label to its cells (one per column, formatted by :func:`format_cell`).
    A ``|`` inside a label is escaped. The text ends with a newline.
    """
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, cells in rows.items():
        if len(cells) != len(columns):
            raise ValueError(f"table row {label!r} has {len(cells)} cells for {len(columns)} columns")
        lines.append(f"| {str(label).replace('|', chr(92) + '|')} | "
                     + " | ".join(format_cell(c, digits) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def metric_table(models: Mapping[str, Mapping], columns: Sequence[tuple[str, str]], *, first: str = "model",
                 digits: int = 1) -> str:
    """:func:`markdown_table` of nested metrics ``{label: {group: {metric: value}}}``, one column per
    ``(group, metric)`` headed ``"group metric"``; a value a model lacks shows ``-``."""
    rows = {label: [metrics.get(group, {}).get(name) for group, name in columns] for label, metrics in models.items()}
    return markdown_table(first, [f"{group} {name}" for group, name in columns], rows, digits=digits)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summarize_seeds(per_seed: Mapping[int, Mapping[str, Mapping[str, Mapping[str, float]]]]) -> dict:
    """Mean and population standard deviation over seeds of every number of every model.

    ``per_seed``: ``{seed: {model: {group: {metric: value}}}}``; returns ``{model: {group: {metric: {"mean": m,
    "std": s}}}}``, computed in float64. Models, groups and metrics are the union over seeds (first-seen order). A
    cell some seeds lack, or hold as None (e.g. a metric one model has in one seed only), is summarised over the
    seeds that have a number, and then says how many: ``{"mean", "std", "n"}`` (shown ``"15.0 ± 5.0 (n=2)"``); a
    cell no seed has a number for is None (shown ``"-"``).
    """
    if not per_seed:
        raise ValueError("summarize_seeds needs the results of at least one seed")
    cells: dict = {}  # model -> group -> metric -> the numbers of the seeds that have one
    for result in per_seed.values():
        for model, metrics in result.items():
            for group, entry in metrics.items():
                for key, value in (entry or {}).items():
                    values = cells.setdefault(model, {}).setdefault(group, {}).setdefault(key, [])
                    if _number(value):
                        values.append(value)
    summary: dict = {}
    for model, metrics in cells.items():
        for group, entry in metrics.items():
            for key, values in entry.items():
                summary.setdefault(model, {}).setdefault(group, {})[key] = _summary(values, len(per_seed))
    return summary


def _summary(values: list[float], seeds: int) -> dict | None:
    """``{"mean", "std"}`` of ``values`` (float64, population std), ``"n"`` added when fewer than ``seeds``; None if empty."""
    if not values:
        return None
    numbers = torch.tensor(values, dtype=torch.float64)
    out = {"mean": float(numbers.mean()), "std": float(numbers.std(unbiased=False))}
    return out if len(values) == seeds else {**out, "n": len(values)}
