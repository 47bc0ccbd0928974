"""Evaluation protocols, registered by name in `PROTOCOLS` (docs/methods.md, "Protocols"): which
classes a run trains on, which test sets it evaluates, how one run's results are summarised and
how `aggregate` tabulates runs; adding one is one registered class.

    markdown, csv_text = aggregate("output")   # mean ± population std over seeds, per protocol

Seeds are averaged within one whole setting (method tag and setting hash, `dcp.rundir`), never
across settings; a tag's settings on different datasets make one table with its average over
the datasets, and a tag with several settings on one dataset is shown once per setting, marked
with its hash.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from .data import DatasetSplits, subsample_classes
from .registry import PROTOCOLS
from .rundir import RunFolder, read_metrics
from .utils import atomic_write_text

log = logging.getLogger(__name__)

Row = Dict[str, object]
Stats = Tuple[float, Optional[float], int]          # mean, std (None for an average), seeds


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def _average(stats: Sequence[Stats]) -> Stats:
    return sum(s[0] for s in stats) / len(stats), None, min(s[2] for s in stats)


def _row(source: str, dataset: str, metric: str, stats: Stats) -> Row:
    return {"source": source, "dataset": dataset, "metric": metric, "stats": stats}


class Protocol:
    """Base: one test set, the training dataset's own test split."""
    title = ""
    targets: Tuple[str, ...] = ()          # default eval.datasets (other test sets)
    columns = ("dataset",)                 # a table line's key (with method and shots)
    metrics = ("accuracy",)                # a table line's cells
    header = ["| dataset | method | shots | accuracy | seeds |", "|---|---|---:|---:|---:|"]

    def __init__(self, name: str):
        self.name = name

    def check(self, cfg) -> Optional[str]:
        """A config problem as `key: reason`, or None."""
        if cfg.eval.datasets and not self.targets:
            return (f"eval.datasets: only the cross_dataset and domain_generalization protocols "
                    f"evaluate on other datasets (protocol is {self.name!r})")
        return None

    def train_subsample(self, cfg) -> str:
        return cfg.data.subsample

    def eval_sets(self, label: str, source: DatasetSplits, train: DatasetSplits,
                  targets: Sequence[str], read: Callable[[str], DatasetSplits]
                  ) -> List[Tuple[str, DatasetSplits]]:
        """[(results key, split)]; `read(name)` reads another dataset from the same data root."""
        return [(label, train)] + [(name, read(name)) for name in targets]

    def summary(self, label: str, results: Dict[str, dict]) -> Dict[str, object]:
        return {"accuracy": results[label]["accuracy"], "macro_f1": results[label]["macro_f1"]}

    def rows(self, stats: Dict[Tuple[str, str], Stats]) -> List[Row]:
        """Table rows of one (method, setting, shots) from {(source, part): stats}."""
        rows = [_row(s, part, "accuracy", v) for (s, part), v in sorted(stats.items())]
        if len(rows) > 1:
            rows.append(_row("", f"average ({len(rows)} datasets)", "accuracy",
                             _average([r["stats"] for r in rows])))
        return rows

    def table(self, rows: List[Row]) -> List[str]:
        """Markdown lines: one per key (`columns`, method, shots), a cell per metric."""
        cells: Dict[tuple, Dict[str, Stats]] = {}
        for r in rows:
            key = tuple(r[c] for c in self.columns) + (r["method"], r["shots"])
            cells.setdefault(key, {})[r["metric"]] = r["stats"]
        out = list(self.header)
        for key, c in cells.items():
            shown = [_cell(c[m]) if m in c else "-" for m in self.metrics]
            seeds = min(s[2] for s in c.values())
            out.append(f"| {' | '.join(map(str, key + tuple(shown)))} | {seeds} |")
        return out


def _cell(s: Stats) -> str:
    return f"{s[0]:.2f}" if s[1] is None else f"{s[0]:.2f} ± {s[1]:.2f}"


def protocol(name: str) -> Protocol:
    """The registered protocol `name`."""
    return PROTOCOLS.get(name)(name)


@PROTOCOLS.register("fewshot")
class FewShot(Protocol):
    title = "Few-shot classification"


@PROTOCOLS.register("base2novel")
class BaseToNovel(Protocol):
    title = "Base-to-novel generalisation"
    metrics = ("base", "novel", "hm")
    header = ["| dataset | method | shots | base | novel | HM | seeds |",
              "|---|---|---:|---:|---:|---:|---:|"]

    def check(self, cfg) -> Optional[str]:
        if cfg.data.subsample != "all":
            return ("data.subsample: the base2novel protocol trains on the base classes and "
                    "tests on base and novel itself; leave data.subsample at 'all'")
        return super().check(cfg)

    def train_subsample(self, cfg) -> str:
        return "base"

    def eval_sets(self, label, source, train, targets, read):
        return [("base", train), ("novel", subsample_classes(source, "new"))]

    def summary(self, label, results):
        base, novel = results["base"]["accuracy"], results["novel"]["accuracy"]
        return {"base": base, "novel": novel, "hm": harmonic_mean(base, novel)}

    def rows(self, stats):
        """base, novel and HM (of the mean base and mean novel accuracy, as the CoCoOp and
        MaPLe tables report it) per dataset; averages over the datasets that have both."""
        def hm(base: Stats, novel: Stats) -> Stats:
            return harmonic_mean(base[0], novel[0]), None, min(base[2], novel[2])

        rows, full = [], {}
        for ds in sorted({s for s, _ in stats}):
            parts = {p: stats[(ds, p)] for p in ("base", "novel") if (ds, p) in stats}
            rows += [_row(ds, ds, p, v) for p, v in parts.items()]
            if len(parts) == 2:
                full[ds] = parts
                rows.append(_row(ds, ds, "hm", hm(parts["base"], parts["novel"])))
        if len(full) > 1:
            name = f"average ({len(full)} datasets)"
            avg = {p: _average([v[p] for v in full.values()]) for p in ("base", "novel")}
            rows += [_row("", name, p, avg[p]) for p in avg]
            rows.append(_row("", name, "hm", hm(avg["base"], avg["novel"])))
        return rows


@PROTOCOLS.register("cross_dataset")
class CrossDataset(Protocol):
    title = "Cross-dataset transfer"
    targets = ("caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
               "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
    columns = ("source", "dataset")
    header = ["| source | target | method | shots | accuracy | seeds |",
              "|---|---|---|---:|---:|---:|"]

    def summary(self, label, results):
        acc = {k: v["accuracy"] for k, v in results.items()}
        targets = {k: v for k, v in acc.items() if k != label}
        return {"source": acc[label], "targets": targets,
                "average": sum(targets.values()) / len(targets) if targets else None}

    def rows(self, stats):
        """Per source: the source first, then each target and the average over the targets."""
        rows = []
        for src in sorted({s for s, _ in stats}):
            parts = sorted((p for s, p in stats if s == src), key=lambda p: (p != src, p))
            rows += [_row(src, p, "accuracy", stats[(src, p)]) for p in parts]
            targets = [stats[(src, p)] for p in parts if p != src]
            if len(targets) > 1:
                rows.append(_row(src, f"average ({len(targets)} targets)", "accuracy",
                                 _average(targets)))
        return rows


@PROTOCOLS.register("domain_generalization")
class DomainGeneralization(CrossDataset):
    title = "Domain generalisation"
    targets = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


# --------------------------------------------------------------------------- the results table
CSV_FIELDS = ["protocol", "source", "dataset", "method", "setting", "shots", "metric", "mean",
              "std", "seeds"]


def _collect(runs: List[Tuple[Path, dict]]) -> Dict[tuple, Dict[Tuple[str, str], Dict[int, float]]]:
    """{(protocol, tag, setting hash, shots): {(source dataset, part): {seed: accuracy}}};
    `part` is the evaluated dataset or base / novel."""
    table: Dict[tuple, Dict] = defaultdict(lambda: defaultdict(dict))
    for path, doc in runs:
        s = doc["setting"]
        if s["protocol"] not in PROTOCOLS:
            log.warning("skipping %s: protocol %r is not registered (a plugin's? pass it with "
                        "--plugin)", path, s["protocol"])
            continue
        group = (s["protocol"], s["tag"], s.get("setting_hash", "?"), int(s["shots"]))
        for part, res in doc["results"].items():
            seeds = table[group][(s["dataset"], part)]
            if s["seed"] in seeds:
                log.warning("%s: seed %s of %s appears twice; keeping the first", path, s["seed"], group)
                continue
            seeds[s["seed"]] = float(res["accuracy"])
    return table


def _mean_std(values: Sequence[float]) -> Stats:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values)), len(values)


def _rows(table) -> List[Row]:
    """Every protocol's rows with {protocol, method, setting, shots}. A tag's runs on different
    datasets form one table (and its average over them); several settings of a tag on one
    dataset are shown apart, the method marked with the setting hash."""
    hashes: Dict[Tuple[str, str, str], set] = defaultdict(set)
    for (p, tag, h, _), parts in table.items():
        for source, _ in parts:
            hashes[(p, tag, source)].add(h)
    merged: Dict[tuple, Dict[Tuple[str, str], Stats]] = defaultdict(dict)
    setting: Dict[tuple, str] = {}
    for (p, tag, h, shots), parts in sorted(table.items()):
        for (source, part), seeds in parts.items():
            label = tag if len(hashes[(p, tag, source)]) == 1 else f"{tag} [{h}]"
            merged[(p, label, shots)][(source, part)] = _mean_std(list(seeds.values()))
            setting[(p, label, shots, source)] = h
    rows = []
    for (p, label, shots), stats in sorted(merged.items()):
        rows += [{"protocol": p, "method": label, "shots": shots,
                  "setting": setting.get((p, label, shots, r["source"]), ""), **r}
                 for r in protocol(p).rows(stats)]
    return rows


def _markdown(rows: List[Row]) -> str:
    out: List[str] = []
    for name in [n for n in PROTOCOLS.names() if any(r["protocol"] == n for r in rows)]:
        p = protocol(name)
        out += [f"## {p.title or name}", ""] + p.table([r for r in rows if r["protocol"] == name]) + [""]
    mixed = sorted({r["method"] for r in rows if "[" in str(r["method"])})
    if mixed:
        out += [f"Several settings of one method are shown apart, marked [setting hash]: "
                f"{', '.join(mixed)}. Each run folder's config.yaml says how they differ.", ""]
    return "\n".join(out)


def _csv(rows: List[Row]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        mean, std, seeds = r["stats"]
        w.writerow({**{k: r[k] for k in CSV_FIELDS[:7]}, "mean": f"{mean:.4f}",
                    "std": "" if std is None else f"{std:.4f}", "seeds": seeds})
    return buf.getvalue()


def _complete(doc: Optional[dict]) -> bool:
    """A metrics document with what the tables read: its setting and an accuracy per result."""
    try:
        s = doc["setting"]
        return (all(isinstance(s[k], str) for k in ("protocol", "tag", "dataset"))
                and isinstance(s["shots"], int) and isinstance(s["seed"], int)
                and all(isinstance(r["accuracy"], (int, float)) for r in doc["results"].values()))
    except (KeyError, TypeError, AttributeError):
        return False


def aggregate(root: Union[str, Path]) -> Tuple[str, str]:
    """Write `summary.md` and `summary.csv` into `root` (atomically); return their texts."""
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder not found: {folder}")
    runs = []
    for path in sorted(folder.rglob(RunFolder.METRICS)):
        doc = read_metrics(path)
        if not _complete(doc):
            log.warning("skipping %s: not a complete dcp metrics file", path)
        else:
            runs.append((path, doc))
    if not runs:
        raise FileNotFoundError(f"no metrics.json found under {root}: train or evaluate first")
    rows = _rows(_collect(runs))
    md = f"# Results under {root} ({len(runs)} runs)\n\n" + _markdown(rows)
    text = _csv(rows)
    atomic_write_text(folder / "summary.md", md)
    atomic_write_text(folder / "summary.csv", text)
    log.info("wrote %s and %s", folder / "summary.md", folder / "summary.csv")
    return md, text
