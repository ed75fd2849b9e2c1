"""Figures logged with a model: feature importance and the confusion matrix."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def feature_importance_figure(importance: dict[str, float], title: str = "Feature importance (gain)"):
    names = sorted(importance, key=importance.get)
    figure, axis = plt.subplots(figsize=(7, 0.35 * max(len(names), 4) + 1))
    axis.barh(names, [importance[n] for n in names], color="#3b7dd8")
    axis.set_title(title)
    axis.set_xlabel("total gain share")
    figure.tight_layout()
    return figure


def confusion_matrix_figure(tn: int, fp: int, fn: int, tp: int, title: str = "Confusion matrix"):
    matrix = np.array([[tn, fp], [fn, tp]])
    figure, axis = plt.subplots(figsize=(4.2, 3.8))
    axis.imshow(matrix, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        axis.text(col, row, f"{value:,}", ha="center", va="center", color=colour)
    axis.set_xticks([0, 1], ["legit", "fraud"])
    axis.set_yticks([0, 1], ["legit", "fraud"])
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    axis.set_title(title)
    figure.tight_layout()
    return figure


def close(figure) -> None:
    plt.close(figure)
