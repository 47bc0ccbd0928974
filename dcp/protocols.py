"""Evaluation protocols, registered by name in `PROTOCOLS` (docs/methods.md, "Protocols").

A protocol says which classes a run trains on, which test sets it evaluates, how one run's
results are summarised and how `aggregate` tabulates runs over seeds. Adding one is one
registered class here (or in a plugin):

    fewshot                trains and tests on one dataset (optionally a class half, data.subsample)
    base2novel             trains on the base half, tests on base and on novel; harmonic mean
    cross_dataset          trains on the source (ImageNet), also tests on eval.datasets
    domain_generalization  the same with ImageNet-V2, -Sketch, -A, -R as targets

`read(name)` passed to `eval_sets` reads another dataset from the same data root.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .data import DatasetSplits, subsample_classes
from .registry import PROTOCOLS

Row = Dict[str, object]
Stats = Tuple[float, Optional[float], int]          # mean, std (None for an average), seeds


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def _cell(s: Stats) -> str:
    return f"{s[0]:.2f}" if s[1] is None else f"{s[0]:.2f} ± {s[1]:.2f}"


def _average(stats: Sequence[Stats]) -> Stats:
    return sum(s[0] for s in stats) / len(stats), None, min(s[2] for s in stats)


class Protocol:
    """Base: one test set, the training dataset's own test split."""
    title = ""
    targets: Tuple[str, ...] = ()          # default eval.datasets (other test sets)

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
        return [(label, train)] + [(name, read(name)) for name in targets]

    def summary(self, label: str, results: Dict[str, dict]) -> Dict[str, object]:
        return {"accuracy": results[label]["accuracy"], "macro_f1": results[label]["macro_f1"]}

    def rows(self, stats: Dict[Tuple[str, str], Stats]) -> List[Row]:
        """Table rows of one (method, setting, shots) from {(source, part): stats}."""
        rows = [{"source": s, "dataset": part, "metric": "accuracy", "stats": v}
                for (s, part), v in sorted(stats.items())]
        if len(rows) > 1:
            rows.append({"source": "", "dataset": f"average ({len(rows)} datasets)",
                         "metric": "accuracy", "stats": _average([r["stats"] for r in rows])})
        return rows

    def table(self, rows: List[Row]) -> List[str]:
        out = ["| dataset | method | shots | accuracy | seeds |", "|---|---|---:|---:|---:|"]
        return out + [f"| {r['dataset']} | {r['method']} | {r['shots']} | {_cell(r['stats'])} | "
                      f"{r['stats'][2]} |" for r in rows]


def protocol(name: str) -> Protocol:
    """The registered protocol `name`."""
    return PROTOCOLS.get(name)(name)


@PROTOCOLS.register("fewshot")
class FewShot(Protocol):
    title = "Few-shot classification"


@PROTOCOLS.register("base2novel")
class BaseToNovel(Protocol):
    title = "Base-to-novel generalisation"

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
        rows, full = [], {}
        for ds in sorted({s for s, _ in stats}):
            parts = {p: stats[(ds, p)] for p in ("base", "novel") if (ds, p) in stats}
            rows += [{"source": ds, "dataset": ds, "metric": p, "stats": v} for p, v in parts.items()]
            if len(parts) == 2:
                full[ds] = parts
                rows.append({"source": ds, "dataset": ds, "metric": "hm",
                             "stats": self._hm(parts["base"], parts["novel"])})
        if len(full) > 1:
            name = f"average ({len(full)} datasets)"
            avg = {p: _average([v[p] for v in full.values()]) for p in ("base", "novel")}
            rows += [{"source": "", "dataset": name, "metric": p, "stats": avg[p]} for p in avg]
            rows.append({"source": "", "dataset": name, "metric": "hm",
                         "stats": self._hm(avg["base"], avg["novel"])})
        return rows

    @staticmethod
    def _hm(base: Stats, novel: Stats) -> Stats:
        return harmonic_mean(base[0], novel[0]), None, min(base[2], novel[2])

    def table(self, rows):
        out = ["| dataset | method | shots | base | novel | HM | seeds |",
               "|---|---|---:|---:|---:|---:|---:|"]
        cells: Dict[tuple, Dict[str, Stats]] = {}
        for r in rows:
            cells.setdefault((r["dataset"], r["method"], r["shots"]), {})[r["metric"]] = r["stats"]
        for (ds, method, shots), c in cells.items():
            line = " | ".join(_cell(c[m]) if m in c else "-" for m in ("base", "novel", "hm"))
            out.append(f"| {ds} | {method} | {shots} | {line} | {min(s[2] for s in c.values())} |")
        return out


@PROTOCOLS.register("cross_dataset")
class CrossDataset(Protocol):
    title = "Cross-dataset transfer"
    targets = ("caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
               "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")

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
            rows += [{"source": src, "dataset": p, "metric": "accuracy", "stats": stats[(src, p)]}
                     for p in parts]
            targets = [stats[(src, p)] for p in parts if p != src]
            if len(targets) > 1:
                rows.append({"source": src, "dataset": f"average ({len(targets)} targets)",
                             "metric": "accuracy", "stats": _average(targets)})
        return rows

    def table(self, rows):
        out = ["| source | target | method | shots | accuracy | seeds |",
               "|---|---|---|---:|---:|---:|"]
        return out + [f"| {r['source']} | {r['dataset']} | {r['method']} | {r['shots']} | "
                      f"{_cell(r['stats'])} | {r['stats'][2]} |" for r in rows]


@PROTOCOLS.register("domain_generalization")
class DomainGeneralization(CrossDataset):
    title = "Domain generalisation"
    targets = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
