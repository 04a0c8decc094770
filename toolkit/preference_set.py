"""Choosing the preference set: the validation questions that best tell good demonstrations
from bad ones.

With results of several models (a JSON file `{model: [0/1 per validation question]}`), a
two-parameter IRT model is fitted and the most discriminative items kept (as ARTE does);
otherwise a discrimination index: the point-biserial correlation between an item's
correctness and the total score across one-shot conditions of the student.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import InputError


def discrimination_index(results: np.ndarray) -> np.ndarray:
    """results: conditions x items of 0/1. Items with no variance get 0."""
    totals = results.sum(axis=1)
    out = np.zeros(results.shape[1])
    if totals.std() == 0:
        return out
    for j in range(results.shape[1]):
        column = results[:, j]
        if column.std() > 0:
            out[j] = np.corrcoef(column, totals)[0, 1]
    return out


def fit_irt_2pl(results: np.ndarray, steps: int = 500, lr: float = 0.05, seed: int = 0) -> dict[str, np.ndarray]:
    """Maximum-likelihood 2PL fit: P(correct) = sigmoid(a_j * (theta_i - b_j)).

    Written here because no maintained PyPI package fits IRT on top of torch/numpy alone;
    a small L2 prior keeps abilities and difficulties finite for all-correct / all-wrong rows.
    """
    torch.manual_seed(seed)
    y = torch.tensor(results, dtype=torch.float32)
    n_resp, n_items = y.shape
    theta = torch.zeros(n_resp, requires_grad=True)
    log_a = torch.zeros(n_items, requires_grad=True)
    b = torch.zeros(n_items, requires_grad=True)
    opt = torch.optim.Adam([theta, log_a, b], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        logits = log_a.exp()[None, :] * (theta[:, None] - b[None, :])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        loss = loss + 0.01 * (theta.pow(2).sum() + b.pow(2).sum() + log_a.pow(2).sum())
        loss.backward()
        opt.step()
    return {"a": log_a.exp().detach().numpy(), "b": b.detach().numpy(), "theta": theta.detach().numpy()}


def load_model_results(path: str | Path, n_items: int) -> np.ndarray:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, None, f"cannot read model results: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise InputError(path, None, "expected {model_name: [0/1 per validation question]}")
    rows = []
    for name, row in data.items():
        if not isinstance(row, list) or len(row) != n_items or any(v not in (0, 1) for v in row):
            raise InputError(path, name, f"must be a list of {n_items} zeros and ones")
        rows.append(row)
    return np.array(rows, dtype=float)


def choose_items(condition_results: np.ndarray, keep: int, model_results: np.ndarray | None = None,
                 seed: int = 0) -> tuple[list[int], dict]:
    """Indices of the `keep` most discriminative items, and a record of how they were chosen."""
    if model_results is not None and len(model_results) >= 3:
        fit = fit_irt_2pl(np.vstack([model_results, condition_results]), seed=seed)
        scores, method = fit["a"], "irt_2pl"
    else:
        scores, method = discrimination_index(condition_results), "discrimination_index"
    order = np.argsort(-scores, kind="stable")[:keep]
    return sorted(order.tolist()), {"method": method, "kept": int(len(order)), "of": int(condition_results.shape[1]),
                                    "mean_discrimination_kept": round(float(scores[order].mean()), 4),
                                    "mean_discrimination_all": round(float(scores.mean()), 4)}
