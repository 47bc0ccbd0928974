"""Metrics of one evaluation, and the results table over run folders.

    m = classification_metrics(preds, labels, num_classes)   # accuracy, macro-F1, per class
    markdown, csv_text = aggregate("output")                 # mean ± std over seeds

Accuracies are percentages. Macro-F1 is Dassl's: scikit-learn's `f1_score(average="macro",
labels=np.unique(y_true))`, the mean F1 over the classes present in the test labels. Over
seeds, `std` is the population standard deviation (numpy's default, as CoOp's
`parse_test_res.py`). Runs are grouped by their whole setting (method tag and setting hash,
`dcp.rundir`): seeds of different settings are never averaged together, and a method that
appears with several settings is shown once per setting, marked with its hash. How each
protocol summarises its groups is `dcp.protocols`.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import torch

from .protocols import protocol
from .registry import PROTOCOLS
from .rundir import read_metrics
from .utils import atomic_write_text

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- one evaluation
def classification_metrics(preds: Sequence[int], labels: Sequence[int],
                           num_classes: int) -> Dict[str, object]:
    """Top-1 accuracy, macro-F1 (%) and per-class accuracy (None for a class without images)
    of predictions (N,) against labels (N,); a prediction of -1 (image skipped) is dropped."""
    p = torch.as_tensor(list(preds), dtype=torch.long)
    y = torch.as_tensor(list(labels), dtype=torch.long)
    keep = p >= 0
    skipped = int((~keep).sum())
    p, y = p[keep], y[keep]
    n = len(y)
    hit = p == y
    tp = torch.bincount(y[hit], minlength=num_classes).double()
    support = torch.bincount(y, minlength=num_classes).double()
    predicted = torch.bincount(p, minlength=num_classes).double()
    present = support > 0
    f1 = 2 * tp / (support + predicted).clamp(min=1)
    per_class = [100.0 * float(t) / float(s) if s > 0 else None for t, s in zip(tp, support)]
    return {"accuracy": 100.0 * float(hit.sum()) / n if n else 0.0,
            "macro_f1": 100.0 * float(f1[present].mean()) if n else 0.0,
            "num_images": n, "num_skipped": skipped, "per_class_accuracy": per_class}


# --------------------------------------------------------------------------- aggregation
def find_runs(root: Union[str, Path]) -> List[Tuple[Path, dict]]:
    """Every complete `metrics.json` of this project under `root` (sorted by path)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"output folder not found: {root}")
    runs = []
    for path in sorted(root.rglob("metrics.json")):
        doc = read_metrics(path)
        if doc is None:
            log.warning("skipping %s: not a complete dcp metrics file", path)
            continue
        runs.append((path, doc))
    return runs


Group = Tuple[str, str, str, int]            # protocol, method tag, setting hash, shots


def collect(runs: Iterable[Tuple[Path, dict]]) -> Dict[Group, Dict[Tuple[str, str], Dict[int, float]]]:
    """{(protocol, tag, setting hash, shots): {(source dataset, evaluated part): {seed: acc}}};
    `part` is the evaluated dataset or base / novel."""
    table: Dict[Group, Dict[Tuple[str, str], Dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for path, doc in runs:
        s = doc["setting"]
        group = (s["protocol"], s["tag"], s.get("setting_hash", "?"), int(s["shots"]))
        for part, res in doc["results"].items():
            seeds = table[group][(s["dataset"], part)]
            if s["seed"] in seeds:
                log.warning("%s: seed %s of %s appears twice; keeping the first", path, s["seed"], group)
                continue
            seeds[s["seed"]] = float(res["accuracy"])
    return table


def _mean_std(values: Sequence[float]) -> Tuple[float, float, int]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values)), len(values)


def summarise(table) -> List[Dict[str, object]]:
    """Rows {protocol, source, dataset, method, setting, shots, metric, stats=(mean, std, seeds)}
    per group, in protocol order; `method` carries the hash where a tag has several settings."""
    hashes: Dict[Tuple[str, str], set] = defaultdict(set)
    for p, tag, h, _ in table:
        hashes[(p, tag)].add(h)
    rows = []
    for (p, tag, h, shots), parts in sorted(table.items()):
        label = tag if len(hashes[(p, tag)]) == 1 else f"{tag} [{h}]"
        stats = {k: _mean_std(list(v.values())) for k, v in parts.items()}
        rows += [{"protocol": p, "method": label, "setting": h, "shots": shots, **r}
                 for r in protocol(p).rows(stats)]
    return rows


def to_markdown(rows: List[Dict[str, object]]) -> str:
    out: List[str] = []
    for name in [n for n in PROTOCOLS.names() if any(r["protocol"] == n for r in rows)]:
        p = protocol(name)
        out += [f"## {p.title or name}", ""] + p.table([r for r in rows if r["protocol"] == name]) + [""]
    mixed = sorted({r["method"] for r in rows if "[" in str(r["method"])})
    if mixed:
        out += [f"Several settings of one method are shown apart, marked [setting hash]: "
                f"{', '.join(mixed)}. Each run folder's config.yaml says how they differ.", ""]
    return "\n".join(out)


CSV_FIELDS = ["protocol", "source", "dataset", "method", "setting", "shots", "metric", "mean",
              "std", "seeds"]


def to_csv(rows: List[Dict[str, object]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        mean, std, seeds = r["stats"]
        w.writerow({**{k: r[k] for k in CSV_FIELDS[:7]}, "mean": f"{mean:.4f}",
                    "std": "" if std is None else f"{std:.4f}", "seeds": seeds})
    return buf.getvalue()


def aggregate(root: Union[str, Path]) -> Tuple[str, str]:
    """Write `summary.md` and `summary.csv` into `root` (atomically); return their texts."""
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no metrics.json found under {root}: train or evaluate first")
    rows = summarise(collect(runs))
    md = f"# Results under {root} ({len(runs)} runs)\n\n" + to_markdown(rows)
    text = to_csv(rows)
    atomic_write_text(Path(root) / "summary.md", md)
    atomic_write_text(Path(root) / "summary.csv", text)
    log.info("wrote %s and %s", Path(root) / "summary.md", Path(root) / "summary.csv")
    return md, text
