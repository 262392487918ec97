"""scikit-learn's figures of labeled predictions, to compare streamscore's with.

usage: quality_sklearn.py < pairs.json
    {"VERSION": {"score": [...], "predicted": [0|1, ...], "actual": [0|1, ...]}, ...}
    prints {"VERSION": {"auc", "log_loss", "brier", "precision", "recall", "f1", "ece", "labeled"}}
    (ece, which scikit-learn lacks: 10 equal-width bins, numpy).
"""

import json
import sys

import numpy as np
import sklearn
from sklearn.metrics import brier_score_loss, f1_score, log_loss, precision_score, recall_score, roc_auc_score


def ece(score, actual, bins=10):
    index = np.minimum(np.floor(np.clip(score, 0, 1) * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.sum() / len(score) * abs(actual[mask].mean() - score[mask].mean())
    return total


out = {}
for version, pairs in json.load(sys.stdin).items():
    score = np.asarray(pairs["score"], dtype=np.float64)
    predicted = np.asarray(pairs["predicted"], dtype=np.int64)
    actual = np.asarray(pairs["actual"], dtype=np.int64)
    out[version] = {
        "labeled": int(len(score)),
        "auc": roc_auc_score(actual, score),
        "log_loss": log_loss(actual, score, labels=[0, 1]),
        "brier": brier_score_loss(actual, score),
        "precision": precision_score(actual, predicted, zero_division=0),
        "recall": recall_score(actual, predicted, zero_division=0),
        "f1": f1_score(actual, predicted, zero_division=0),
        "ece": ece(score, actual.astype(np.float64)),
    }
out["_sklearn"] = sklearn.__version__
print(json.dumps(out))
