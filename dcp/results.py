"""Metrics of one evaluation, and the results table over run folders.

    m = classification_metrics(preds, labels, num_classes)   # accuracy, macro-F1, per class
    markdown, csv_text = aggregate("output")                 # mean ± std over seeds

Accuracies are percentages. Macro-F1 follows scikit-learn's `f1_score(average="macro")` as
Dassl reports it: the mean F1 over the classes that occur in the labels or the predictions.
Over seeds, `std` is the population standard deviation (numpy's default, as CoOp's
`parse_test_res.py`). The base-to-novel harmonic mean is taken of the mean base and mean
novel accuracies, as the CoCoOp/MaPLe tables report it; averages over datasets are means of
the per-dataset means (and the harmonic mean of the averaged base and novel accuracies).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .utils import atomic_write_text

log = logging.getLogger(__name__)

METRICS_FORMAT = "dcp-metrics-1"


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
    present = (support + predicted) > 0
    f1 = torch.where(present, 2 * tp / (support + predicted).clamp(min=1), torch.zeros_like(tp))
    per_class = [100.0 * float(t) / float(s) if s > 0 else None for t, s in zip(tp, support)]
    return {"accuracy": 100.0 * float(hit.sum()) / n if n else 0.0,
            "macro_f1": 100.0 * float(f1[present].mean()) if n else 0.0,
            "num_images": n, "num_skipped": skipped, "per_class_accuracy": per_class}


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def write_metrics(path: Union[str, Path], doc: Dict[str, object]) -> None:
    atomic_write_text(path, json.dumps({"format": METRICS_FORMAT, **doc}, indent=1) + "\n")


# --------------------------------------------------------------------------- aggregation
def find_runs(root: Union[str, Path]) -> List[Tuple[Path, dict]]:
    """Every readable `metrics.json` under `root` (sorted by path)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"output folder not found: {root}")
    runs = []
    for path in sorted(root.rglob("metrics.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping %s: %s", path, e)
            continue
        if not isinstance(doc, dict) or doc.get("format") != METRICS_FORMAT:
            log.warning("skipping %s: not a dcp metrics file", path)
            continue
        runs.append((path, doc))
    return runs


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


Key = Tuple[str, str, str, str, int]     # protocol, source dataset, evaluated part, method, shots


def collect(runs: Iterable[Tuple[Path, dict]]) -> Dict[Key, Dict[int, float]]:
    """{(protocol, source, part, method, shots): {seed: accuracy}}; `part` is the evaluated
    dataset (fewshot, cross-dataset, domain generalisation) or base / novel."""
    table: Dict[Key, Dict[int, float]] = defaultdict(dict)
    for path, doc in runs:
        s = doc["setting"]
        for part, res in doc["results"].items():
            key = (s["protocol"], s["dataset"], part, s["tag"], int(s["shots"]))
            if s["seed"] in table[key]:
                log.warning("%s: seed %s of %s appears twice; keeping the first", path, s["seed"], key)
                continue
            table[key][s["seed"]] = float(res["accuracy"])
    return table


def summarise(table: Dict[Key, Dict[int, float]]) -> List[Dict[str, object]]:
    """Rows {protocol, source, dataset, method, shots, metric, mean, std, seeds}: per dataset
    (per base / novel / hm for base-to-novel) and the average over datasets."""
    rows: List[Dict[str, object]] = []
    stats = {k: _mean_std(list(v.values())) + (len(v),) for k, v in table.items()}
    groups: Dict[Tuple[str, str, int], List[Key]] = defaultdict(list)
    for k in sorted(stats):
        groups[(k[0], k[3], k[4])].append(k)

    def row(p, src, ds, m, k, metric, mean, std, n):
        rows.append({"protocol": p, "source": src, "dataset": ds, "method": m, "shots": k,
                     "metric": metric, "mean": mean, "std": std, "seeds": n})

    for (p, m, k), keys in sorted(groups.items()):
        if p == "base2novel":
            per_ds: Dict[str, Dict[str, Tuple[float, float, int]]] = defaultdict(dict)
            for key in keys:
                per_ds[key[1]][key[2]] = stats[key]
            full = {ds: v for ds, v in per_ds.items() if "base" in v and "novel" in v}
            for ds, v in sorted(per_ds.items()):
                for part in ("base", "novel"):
                    if part in v:
                        row(p, ds, ds, m, k, part, *v[part])
                if ds in full:
                    row(p, ds, ds, m, k, "hm", harmonic_mean(v["base"][0], v["novel"][0]), None,
                        min(v["base"][2], v["novel"][2]))
            if len(full) > 1:
                b = sum(v["base"][0] for v in full.values()) / len(full)
                nv = sum(v["novel"][0] for v in full.values()) / len(full)
                n = min(min(v["base"][2], v["novel"][2]) for v in full.values())
                row(p, "", f"average ({len(full)} datasets)", m, k, "base", b, None, n)
                row(p, "", f"average ({len(full)} datasets)", m, k, "novel", nv, None, n)
                row(p, "", f"average ({len(full)} datasets)", m, k, "hm", harmonic_mean(b, nv), None, n)
        elif p == "fewshot":
            for key in keys:
                row(p, key[1], key[2], m, k, "accuracy", *stats[key])
            if len(keys) > 1:
                avg = sum(stats[key][0] for key in keys) / len(keys)
                row(p, "", f"average ({len(keys)} datasets)", m, k, "accuracy", avg, None,
                    min(stats[key][2] for key in keys))
        else:            # cross_dataset, domain_generalization: source -> targets
            by_src: Dict[str, List[Key]] = defaultdict(list)
            for key in keys:
                by_src[key[1]].append(key)
            for src, ks in sorted(by_src.items()):
                ks = sorted(ks, key=lambda key: (key[2] != src, key[2]))   # source first
                for key in ks:
                    row(p, src, key[2], m, k, "accuracy", *stats[key])
                targets = [key for key in ks if key[2] != src]
                if len(targets) > 1:
                    avg = sum(stats[key][0] for key in targets) / len(targets)
                    row(p, src, f"average ({len(targets)} targets)", m, k, "accuracy", avg, None,
                        min(stats[key][2] for key in targets))
    return rows


_TITLES = {"fewshot": "Few-shot classification", "base2novel": "Base-to-novel generalisation",
           "cross_dataset": "Cross-dataset transfer", "domain_generalization": "Domain generalisation"}


def _cell(mean: float, std: Optional[float]) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def to_markdown(rows: List[Dict[str, object]]) -> str:
    """One table per protocol: accuracy (mean ± std over seeds, %); base-to-novel with base,
    novel and HM columns."""
    out: List[str] = []
    for p in [p for p in _TITLES if any(r["protocol"] == p for r in rows)]:
        rs = [r for r in rows if r["protocol"] == p]
        out.append(f"## {_TITLES[p]}\n")
        if p == "base2novel":
            out.append("| dataset | method | shots | base | novel | HM | seeds |")
            out.append("|---|---|---:|---:|---:|---:|---:|")
            cells: Dict[tuple, Dict[str, str]] = defaultdict(dict)
            seeds: Dict[tuple, int] = {}
            for r in rs:
                key = (r["dataset"], r["method"], r["shots"])
                cells[key][r["metric"]] = _cell(r["mean"], r["std"])
                seeds[key] = min(seeds.get(key, r["seeds"]), r["seeds"])
            for key, c in cells.items():
                out.append(f"| {key[0]} | {key[1]} | {key[2]} | {c.get('base', '-')} | "
                           f"{c.get('novel', '-')} | {c.get('hm', '-')} | {seeds[key]} |")
        else:
            head = "| dataset |" if p == "fewshot" else "| source | target |"
            out.append(f"{head} method | shots | accuracy | seeds |")
            out.append("|---|" + ("" if p == "fewshot" else "---|") + "---|---:|---:|---:|")
            for r in rs:
                lead = f"| {r['dataset']} |" if p == "fewshot" else f"| {r['source']} | {r['dataset']} |"
                out.append(f"{lead} {r['method']} | {r['shots']} | {_cell(r['mean'], r['std'])} | "
                           f"{r['seeds']} |")
        out.append("")
    return "\n".join(out)


CSV_FIELDS = ["protocol", "source", "dataset", "method", "shots", "metric", "mean", "std", "seeds"]


def to_csv(rows: List[Dict[str, object]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "mean": f"{r['mean']:.4f}",
                    "std": "" if r["std"] is None else f"{r['std']:.4f}"})
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
