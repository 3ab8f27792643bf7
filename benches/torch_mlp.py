#!/usr/bin/env python3
"""The click model of `trimtab train`, in PyTorch, as a benchmark baseline.

Same data handling (context ++ chosen action's features or one-hot; label reward > 0), same
split (last 15% test; last 15% of the rest validation; floor of the products), same network
(in -> 64 -> ReLU -> dropout 0.2 -> 32 -> ReLU -> dropout 0.2 -> 1), BCEWithLogits, Adam 1e-3,
batch 32 shuffled per epoch, early stopping on validation log-loss (patience 5, max 50
epochs, keep the best weights). Prints one JSON object:
{"epochs", "best_epoch", "train_seconds", "seconds_per_epoch", "threads", "metrics": {"auc", "pr_auc", "logloss", "mae"}}

Usage: python benches/torch_mlp.py LOG.jsonl [--threads N] [--seed S] [--actions K]
Needs torch and numpy (benchmark only; not a trimtab dependency):
  pip install torch numpy --index-url https://download.pytorch.org/whl/cpu
"""
import argparse
import copy
import json
import math
import os
import time

import numpy as np
import torch
from torch import nn


def load(path, n_actions=None):
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    k = n_actions
    if k is None:
        one_hot = [r["action"] + 1 for r in rows if r.get("actions") is None]
        k = max(one_hot) if one_hot else 0
    xs, ys = [], []
    for r in rows:
        acts = r.get("actions")
        if acts is not None:
            a = acts[r["action"]]
        else:
            a = [0.0] * k
            a[r["action"]] = 1.0
        xs.append(list(r["context"]) + list(a))
        ys.append(1.0 if r["reward"] > 0 else 0.0)
    return np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.float32)


def split(n, test_fraction=0.15, validation_fraction=0.15):
    n_test = math.floor(n * test_fraction)
    rest = n - n_test
    n_val = math.floor(rest * validation_fraction)
    return slice(0, rest - n_val), slice(rest - n_val, rest), slice(rest, n)


def auc_roc(s, y):
    s = s.astype(np.float64)
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank per value
    r = avg_rank[inv]
    p = float((y > 0.5).sum())
    q = len(y) - p
    if p == 0 or q == 0:
        return float("nan")
    return float((r[y > 0.5].sum() - p * (p + 1) / 2) / (p * q))


def average_precision(s, y):
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], (y[order] > 0.5).astype(np.float64)
    p = y.sum()
    if p == 0:
        return float("nan")
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / p
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def log_loss(p, y):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(np.where(y > 0.5, np.log(p), np.log(1 - p))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--actions", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--patience", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    x, y = load(args.log, args.actions)
    tr, va, te = split(len(y))
    xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(y[tr]).unsqueeze(1)
    xv, yv = torch.from_numpy(x[va]), torch.from_numpy(y[va]).unsqueeze(1)
    xe, ye = torch.from_numpy(x[te]), y[te]

    model = nn.Sequential(
        nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(32, 1),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(args.seed)

    best, best_epoch, best_state, epochs = float("inf"), 0, copy.deepcopy(model.state_dict()), 0
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(yt), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = loss_fn(model(xv), yv).item()
        epochs = epoch
        if val < best:
            best, best_epoch, best_state = val, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= args.patience:
            break
    train_seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(xe)).squeeze(1).numpy()
    print(json.dumps({
        "epochs": epochs,
        "best_epoch": best_epoch,
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / epochs,
        "threads": args.threads,
        "metrics": {
            "auc": auc_roc(p, ye),
            "pr_auc": average_precision(p, ye),
            "logloss": log_loss(p, ye),
            "mae": float(np.mean(np.abs(p - ye))),
        },
    }))


if __name__ == "__main__":
    main()
