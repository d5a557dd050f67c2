"""The first-layer study's summary.json, plots and docs/first-layer-study.md, from its JSON.

    python experiments/first_layer_report.py STUDY_DIR [--docs docs/first-layer-study.md]

Reads DIR/study.json (schedule and variants) and DIR/<variant>-s<seed>/metrics.json (plus
metrics.jsonl, embedding.json and runtime.json where the study wrote them); nothing else. Rows are
one per variant with at least one finished seed: top-1 mean and (over >= 2 seeds) sample std, the
gap to the float-first-layer W1A2 network of the same tier (over the seeds both finished), and the
first layer's MACs, bit-ops and parameter bits (computed from the variant's model for one RGB image
of the size it trained on, 32 x 32 unless the study ran with an image size).
"""
from __future__ import annotations

import argparse
import json
import sys
import statistics
from pathlib import Path

from pixelq.errors import ConfigError
from pixelq.models import create_model, first_layer_cost

REFERENCES = {"headline": "w1a2-float-first", "ablation": "short-w1a2-float-first"}


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(study_dir: "str | Path") -> dict:
    """{"schedule": ..., "rows": [...]}; also written to DIR/summary.json by `write_report`."""
    study_dir = Path(study_dir)
    study = _load(study_dir / "study.json")
    if study is None:
        raise ConfigError(f"{study_dir}: no study.json; run `python experiments/first_layer_study.py --out {study_dir}` first")
    rows = []
    for v in study["variants"]:
        runs = [p for p in (study_dir / f"{v['name']}-s{seed}" / "metrics.json" for seed in study["schedule"]["seeds"])
                if p.is_file()]
        metrics = [_load(p) for p in runs]
        if not metrics:
            continue
        top1 = [m["top1"] for m in metrics]
        size = metrics[0]["config"].get("image_size") or 32
        model = create_model(metrics[0]["config"]["model"], in_channels=3, num_classes=len(metrics[0]["classes"]),
                             first_layer=v["first_layer"], first_layer_kwargs=v["first_layer_kwargs"],
                             wbits=v["wbits"], abits=v["abits"], last_layer=v["last_layer"])
        row = {"variant": v["name"], "tier": v["tier"], "first_layer": v["first_layer"],
               "first_layer_kwargs": v["first_layer_kwargs"], "wbits": v["wbits"], "abits": v["abits"],
               "last_layer": v["last_layer"], "epochs": metrics[0]["epochs"], "train_size": metrics[0]["train_size"],
               "test_size": metrics[0]["n"], "data": metrics[0]["config"]["data"],
               "seeds": [m["config"]["seed"] for m in metrics], "top1": top1, "top1_mean": statistics.fmean(top1),
               "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
               "top5_mean": statistics.fmean(m["top5"] for m in metrics),
               "image_size": size, "first_layer_cost": first_layer_cost(model, size, size)}
        deployed = [d for d in (_load(p.parent / "runtime.json") for p in runs) if d]
        if deployed:
            row["runtime"] = {k: statistics.fmean(d[k] for d in deployed)
                              for k in ("runtime_top1", "images_per_s", "label_agreement")}
            row["runtime"]["isa"] = sorted({d.get("isa") or "unrecorded" for d in deployed})
        rows.append(row)
    by_name = {r["variant"]: r for r in rows}
    for r in rows:
        r["gap_to_float_first"] = _gap(r, by_name.get(REFERENCES[r["tier"]]))
    return {"schedule": study["schedule"], "rows": rows}


def _paired(row: dict, ref: dict) -> tuple:
    """(row mean, ref mean, seeds) over the seeds both finished (the same seed shares data order
    and augmentation); the plain means and () where they share none."""
    ref_top1 = dict(zip(ref["seeds"], ref["top1"]))
    shared = [(seed, top1, ref_top1[seed]) for seed, top1 in zip(row["seeds"], row["top1"]) if seed in ref_top1]
    if not shared:
        return row["top1_mean"], ref["top1_mean"], ()
    return statistics.fmean(t for _, t, _ in shared), statistics.fmean(t for _, _, t in shared), \
        tuple(seed for seed, _, _ in shared)


def _gap(row: dict, ref: "dict | None") -> "float | None":
    """row - ref in top-1 points, over the seeds both finished (see `_paired`)."""
    if ref is None:
        return None
    mine, theirs, _ = _paired(row, ref)
    return mine - theirs


def _over(row: dict, ref: dict) -> str:
    """' at seed 0' where the comparison covers fewer seeds than either row has, else ''."""
    seeds = _paired(row, ref)[2]
    if not seeds or len(seeds) == max(len(row["seeds"]), len(ref["seeds"])):
        return ""
    return f" at seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _seed_spread(rows: list, tier: str = "headline") -> list:
    """The sample std over seeds of every row of `tier` that has one."""
    return [r["top1_std"] for r in rows if r["tier"] == tier and r.get("top1_std") is not None]


def _fmt(value, spec: str, empty: str = "–") -> str:
    return empty if value is None else format(value, spec)


def _table(rows: list) -> list:
    lines = ["| variant | first layer | last layer | seeds | top-1 % (mean ± std) | gap to float first | "
             "first-layer bit-ops | first-layer param bits | runtime top-1 % | runtime images/s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        kwargs = ", ".join(f"{k}={v}" for k, v in r["first_layer_kwargs"].items())
        std = f" ± {r['top1_std']:.2f}" if r["top1_std"] is not None else ""
        cost = r["first_layer_cost"]
        rt = r.get("runtime") or {}
        lines.append(f"| {r['variant']} | {r['first_layer']}{f' ({kwargs})' if kwargs else ''} | {r['last_layer']} | "
                     f"{len(r['seeds'])} | {r['top1_mean']:.2f}{std} | {_fmt(r['gap_to_float_first'], '+.2f')} | "
                     f"{cost['bops']:.3g} | {cost['param_bits']:,} | {_fmt(rt.get('runtime_top1'), '.2f')} | "
                     f"{_fmt(rt.get('images_per_s'), '.0f')} |")
    return lines


def _subplots(*args, **kwargs):
    """matplotlib's subplots on the file-only Agg backend (imported here, not at start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_cost(rows: list, path: Path) -> None:
    fig, ax = _subplots(figsize=(7, 4.5))
    for tier, marker in (("headline", "o"), ("ablation", "^")):
        part = [r for r in rows if r["tier"] == tier]
        if not part:
            continue
        xs = [r["first_layer_cost"]["bops"] for r in part]
        ys = [r["top1_mean"] for r in part]
        errs = [r["top1_std"] or 0.0 for r in part]
        ax.errorbar(xs, ys, yerr=errs, fmt=marker, capsize=3, label=f"{tier} runs")
        for r, x, y in zip(part, xs, ys):
            ax.annotate(r["variant"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    size = rows[0]["image_size"]
    ax.set_xlabel(f"first-layer bit-ops per {size}x{size} image (MACs x input bits x weight bits)")
    ax.set_ylabel("top-1 %")
    ax.set_title("ResNet-20 W1A2: accuracy against the first layer's cost")
    ax.legend(fontsize=8)
    _save(fig, path)


def gap_by_epoch(study_dir: Path, rows: list) -> dict:
    """{variant: [mean test top-1 gap to w1a2-float-first after each epoch]} for the headline W1A2
    rows, from each run's metrics.jsonl, averaged over the seeds both finished."""
    ref = next((r for r in rows if r["variant"] == REFERENCES["headline"]), None)
    if ref is None:
        return {}

    def curve(variant: str, seed: int) -> list:
        path = study_dir / f"{variant}-s{seed}" / "metrics.jsonl"
        return [json.loads(line)["test_top1"] for line in path.read_text().splitlines()] if path.is_file() else []

    ref_curves = {s: curve(ref["variant"], s) for s in ref["seeds"]}
    out = {}
    for r in rows:
        if r["tier"] != "headline" or r is ref or r["wbits"] > 8:
            continue
        gaps = [[a - b for a, b in zip(curve(r["variant"], s), ref_curves[s])] for s in r["seeds"] if s in ref_curves]
        gaps = [g for g in gaps if g]
        if gaps:
            out[r["variant"]] = [statistics.fmean(g[e] for g in gaps) for e in range(min(map(len, gaps)))]
    return out


def plot_gap_by_epoch(gaps: dict, path: Path) -> None:
    fig, ax = _subplots(figsize=(7, 4))
    for variant, gap in gaps.items():
        ax.plot(range(1, len(gap) + 1), gap, marker=".", lw=1.5 if variant.startswith("w1a2-pe") else 0.8,
                label=variant)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_ylim(max(-8.0, min(min(g) for g in gaps.values()) - 0.5), max(1.0, max(max(g) for g in gaps.values()) + 0.5))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 gap to w1a2-float-first (points)")
    ax.set_title("Gap to the float first layer during training (mean over seeds)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_embedding_curves(record: dict, title: str, path: Path) -> None:
    """One panel per table (shared, or R, G, B); each of the d dimensions a step curve over 0..255,
    stacked one above the other so none hides another."""
    tables = record["table"]
    names = ["shared by R, G, B"] if record["shared"] else ["R", "G", "B"][:len(tables)]
    values = [v for t in tables for row in t for v in row]
    low, span = min(values), (max(values) - min(values)) or 1.0
    step = 1.3 * span
    height = min(9.0, 1.6 + 0.32 * record["d"])
    fig, axes = _subplots(1, len(tables), figsize=(max(6.5, 4.5 * len(tables)), height), squeeze=False)
    for ax, table, name in zip(axes[0], tables, names):
        for j in range(record["d"]):
            ax.step(range(256), [row[j] - low + j * step for row in table], where="mid", lw=1)
        ax.set_yticks([j * step + span / 2 for j in range(record["d"])], [f"dim {j}" for j in range(record["d"])],
                      fontsize=7)
        ax.set_xlim(0, 255)
        ax.set_xlabel("pixel value")
        ax.set_title(f"{name}", fontsize=9)
    axes[0][0].set_ylabel(f"quantized value (0 to {span:.3g} per row)")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def _targets(rows: list) -> list:
    by_name = {r["variant"]: r for r in rows}
    out = []
    ref = by_name.get(REFERENCES["headline"])
    for name, bound in (("w1a2-pe", 1.0), ("w1a2-pe-qlast", 1.5)):
        r = by_name.get(name)
        if r and r["gap_to_float_first"] is not None:
            miss = -r["gap_to_float_first"] - bound
            verdict = "met" if miss <= 0 else f"not met, by {miss:.2f}"
            line = (f"- `{name}`: {r['top1_mean']:.2f} % over {len(r['seeds'])} seed(s), "
                    f"{-r['gap_to_float_first']:.2f} points below `w1a2-float-first`{_over(r, ref)} "
                    f"(target ≤ {bound}: {verdict}).")
            # the same seed shares the data order and augmentation, so per-seed gaps are the paired view
            paired = {seed: top1 - dict(zip(ref["seeds"], ref["top1"]))[seed]
                      for seed, top1 in zip(r.get("seeds", []), r.get("top1", [])) if seed in ref.get("seeds", [])}
            if len(paired) > 1:
                se = statistics.stdev(paired.values()) / len(paired) ** 0.5
                line += (" Gap per seed: " + ", ".join(f"s{seed} {gap:+.2f}" for seed, gap in paired.items())
                         + f"; standard error of the mean gap {se:.2f}.")
            out.append(line)
    quantized = [r for r in rows if r["tier"] == "headline" and r["first_layer"] not in ("float", "pixel-embedding")]
    pe = by_name.get("w1a2-pe")
    if pe and quantized:
        spread = _seed_spread(rows)
        noise = statistics.fmean(spread) if spread else None
        gaps = {r["variant"]: _gap(r, pe) for r in quantized}
        behind = [v for v, gap in gaps.items() if gap >= 0]
        tied = [v for v, gap in gaps.items() if noise and -noise < gap < 0]
        if behind:
            out.append(f"- pixel embedding is not ahead of: {', '.join(behind)}.")
        elif tied:
            out.append(f"- pixel embedding's mean top-1 is above every other quantized first layer's in the headline "
                       f"rows, but its lead over {', '.join(f'`{v}`' for v in tied)} is smaller than the headline "
                       f"rows' mean seed std ({noise:.2f}): the study does not separate them.")
        else:
            out.append("- pixel embedding is ahead of every other quantized first layer in the headline rows.")
        # what each costs beside it: accuracy for first-layer work is the trade the table is about
        for r in sorted(quantized, key=lambda r: -r["top1_mean"]):
            gap = gaps[r["variant"]]
            ratio = r["first_layer_cost"]["bops"] / pe["first_layer_cost"]["bops"]
            close = f"; within the headline rows' mean seed std of {noise:.2f}" if noise and abs(gap) < noise else ""
            line = (f"  - `{r['variant']}`: {r['top1_mean']:.2f} % ({gap:+.2f} against `w1a2-pe`{_over(r, pe)}{close}) "
                    f"with {ratio:.3g}x pixel embedding's first-layer bit-ops")
            if r.get("runtime") and pe.get("runtime"):
                line += (f"; on the integer runtime {r['runtime']['images_per_s']:,.0f} images/s against "
                         f"{pe['runtime']['images_per_s']:,.0f}")
            out.append(line + ".")
        # a first layer as accurate for less work is where pixel embedding's case does not hold here
        cheaper = [r for r in quantized if r["variant"] in behind + tied
                   and r["first_layer_cost"]["bops"] < pe["first_layer_cost"]["bops"]]
        if cheaper:
            float_first = ref["first_layer_cost"]["bops"] / pe["first_layer_cost"]["bops"] if ref else None
            names = ", ".join(f"`{r['variant']}`" for r in cheaper)
            out.append(f"- {names} is as accurate as pixel embedding (within the seed noise, or better) "
                       "for fewer first-layer bit-ops, so on this data and schedule the study does "
                       "not show pixel embedding's advantage over it"
                       + (f"; its advantage over the float first layer ({float_first:.3g}x fewer first-layer "
                          f"bit-ops for {-_gap(pe, ref):.2f} points of top-1) stands." if float_first else "."))
    return out


def _key(r: dict, **changes) -> tuple:
    """A row's model settings (first layer, its kwargs, precision, last layer), some replaced."""
    kwargs = {**r["first_layer_kwargs"], **{k: v for k, v in changes.items() if k in r["first_layer_kwargs"]}}
    last = changes.get("last_layer", r["last_layer"])
    return changes.get("tier", r["tier"]), r["first_layer"], json.dumps(kwargs, sort_keys=True), r["wbits"], r["abits"], last


# Pixel-embedding grid factors: (what changes, setting, from, to)
_FACTORS = (("per-colour tables instead of one shared table", "shared", True, False),
            ("random uniform initialisation instead of thermometer", "init", "thermometer", "uniform"),
            ("Q = 2 bits instead of 1", "bits", 1, 2),
            ("d = 10 instead of 4", "d", 4, 10),
            ("d = 16 instead of 10", "d", 10, 16))


def _embedding_grid(rows: list) -> list:
    """The ablation tier's pixel-embedding grid as one table, then each factor's effect averaged
    over the pairs of rows that differ only in it, next to the seed-to-seed spread."""
    grid = [r for r in rows if r["tier"] == "ablation" and r["first_layer"] == "pixel-embedding"
            and r["last_layer"] == "float"]
    if not grid:
        return []
    cell = {(r["first_layer_kwargs"]["d"], r["first_layer_kwargs"]["bits"], r["first_layer_kwargs"]["shared"],
             r["first_layer_kwargs"]["init"]): r for r in grid}
    columns = [(shared, init) for shared in (True, False) for init in ("thermometer", "uniform")]
    lines = ["### Pixel-embedding grid", "",
             "Top-1 % (gap to `short-w1a2-float-first`) at the ablation schedule, last layer float; one seed, "
             "* a mean over seeds.", "",
             "| d | Q | " + " | ".join(f"{'shared' if sh else 'per-colour'}, {init} init" for sh, init in columns)
             + " | first-layer bit-ops |", "|---:|---:|" + "---:|" * (len(columns) + 1)]
    for d, bits in sorted({(k[0], k[1]) for k in cell}):
        cells = []
        for shared, init in columns:
            r = cell.get((d, bits, shared, init))
            mark = "*" if r is not None and len(r["seeds"]) > 1 else ""
            cells.append("–" if r is None else f"{r['top1_mean']:.2f}{mark} ({_fmt(r['gap_to_float_first'], '+.2f')})")
        bitops = next(r for k, r in cell.items() if k[:2] == (d, bits))["first_layer_cost"]["bops"]
        lines.append(f"| {d} | {bits} | " + " | ".join(cells) + f" | {bitops:.3g} |")
    lines += ["", "Each factor's effect: the top-1 change between rows that differ only in it, at the seeds both ran."]
    by_key = {_key(r): r for r in grid}
    for label, name, before, after in _FACTORS:
        diffs = [_gap(by_key[_key(r, **{name: after})], r) for r in grid
                 if r["first_layer_kwargs"][name] == before and _key(r, **{name: after}) in by_key]
        if diffs:
            se = (f"; standard error of the mean {statistics.stdev(diffs) / len(diffs) ** 0.5:.2f}"
                  if len(diffs) > 1 else "")
            lines.append(f"- {label}: {statistics.fmean(diffs):+.2f} points on average over {len(diffs)} pair(s) "
                         f"(from {min(diffs):+.2f} to {max(diffs):+.2f}{se}).")
    for tier, schedule in (("ablation", "this schedule"), ("headline", "the full schedule")):
        spread = _seed_spread(rows, tier)
        if spread:
            lines.append(f"- For scale: at {schedule} the std over seeds averages {statistics.fmean(spread):.2f} points "
                         f"({len(spread)} row{'s' if len(spread) > 1 else ''}); a difference of that size between "
                         "two one-seed rows is noise.")
    return lines + [""]


def _last_layer_cost(rows: list) -> list:
    """What quantizing the last layer costs each quantized first layer, like for like."""
    by_key = {_key(r): r for r in rows}
    pairs = [(by_key[_key(r, last_layer="float")], r) for r in rows
             if r["last_layer"] == "quantized" and _key(r, last_layer="float") in by_key]
    if not pairs:
        return []
    lines = ["### Quantizing the last layer", "",
             "The same first layer with a float and with a quantized last layer, at the same schedule, over "
             "the seeds both finished.", "",
             "| tier | float last | top-1 % | quantized last | top-1 % | change |", "|---|---|---:|---|---:|---:|"]
    for f, q in pairs:
        mine, theirs, _ = _paired(q, f)
        lines.append(f"| {q['tier']} | {f['variant']} | {theirs:.2f} | {q['variant']} | {mine:.2f} | "
                     f"{mine - theirs:+.2f}{_over(q, f)} |")
    return lines + [""]


def _schedule_check(rows: list) -> list:
    """Whether the ablation schedule orders the quantized first layers as the full schedule does:
    each headline row beside its ablation twin (the same model), and how many pairs of them the two
    schedules put in the same order."""
    by_key = {_key(r): r for r in rows}
    twins = [(r, by_key.get(_key(r, tier="ablation"))) for r in rows
             if r["tier"] == "headline" and r["first_layer"] != "float" and r["gap_to_float_first"] is not None]
    twins = [(full, short) for full, short in twins if short and short["gap_to_float_first"] is not None]
    if len(twins) < 2:
        return []
    by_name = {r["variant"]: r for r in rows}
    refs = [by_name.get(REFERENCES[tier]) for tier in ("headline", "ablation")]
    lines = ["### Does the shorter schedule rank first layers like the full one?", "",
             "Each headline row beside the same model at the ablation schedule, as gaps to that schedule's float "
             "first layer.", "", "| full schedule | gap | ablation schedule | gap |", "|---|---:|---|---:|"]
    for full, short in twins:
        lines.append(f"| {full['variant']} | {full['gap_to_float_first']:+.2f} | {short['variant']} | "
                     f"{short['gap_to_float_first']:+.2f} |")
    pairs = [(a, b) for i, a in enumerate(twins) for b in twins[i + 1:]]
    def shown(r: dict) -> float:  # gaps are ordered as the table shows them: a tie has no order
        return round(r["gap_to_float_first"], 2)

    same = sum((shown(a[0]) - shown(b[0])) * (shown(a[1]) - shown(b[1])) > 0 for a, b in pairs)
    line = f"{same} of {len(pairs)} pairs of these rows are in the same order at both schedules (a tie is in none)."
    if all(refs):
        line += (f" The float first layer reaches {refs[1]['top1_mean']:.2f} % at the ablation schedule against "
                 f"{refs[0]['top1_mean']:.2f} % at the full one: the ablation gaps measure how far each first layer "
                 "gets in a short run, which need not be where it ends.")
    return lines + ["", line, ""]


def write_report(study_dir: "str | Path", docs: "str | Path" = "docs/first-layer-study.md") -> dict:
    """summary.json in DIR; `docs` (markdown) and its PNG plots beside it. Returns the summary."""
    study_dir, docs = Path(study_dir), Path(docs)
    summary = summarize(study_dir)
    rows = summary["rows"]
    (study_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    docs.parent.mkdir(parents=True, exist_ok=True)
    s = summary["schedule"]
    data = next((Path(r["data"]).name for r in rows if r["data"]), "the embedded CIFAR-10-JPEG subset")
    test_size = rows[0]["test_size"] if rows else 0
    size = rows[0]["image_size"] if rows else 32
    headline_seeds = sorted({seed for r in rows if r["tier"] == "headline" for seed in r["seeds"]}) or s["seeds"]
    # headline rows still short of the full seed list (a study stopped, or under way)
    short = [f"`{r['variant']}` at seeds {', '.join(map(str, r['seeds']))}" for r in rows
             if r["tier"] == "headline" and set(r["seeds"]) < set(headline_seeds)]
    isas = sorted({isa for r in rows if r.get("runtime") for isa in r["runtime"]["isa"]})
    if len(isas) == 1:
        timed = f" All were timed with the runtime's `{isas[0]}` conv."
    else:
        timed = (" They were timed with different convs (" + ", ".join(f"`{i}`" for i in isas) + "), whose speeds "
                 "do not compare: re-time them in one sitting.") if isas else ""
    noise = [r["variant"] for r in rows if r["tier"] == "ablation" and len(r["seeds"]) > 1]
    noise_seeds = sorted({seed for r in rows if r["variant"] in noise for seed in r["seeds"]})
    lines = [f"# First-layer study: ResNet-20 W1A2 on {data}", "",
             f"Rendered by `python experiments/first_layer_report.py {study_dir}` from `{study_dir}/*/metrics.json` "
             f"(trained by `python experiments/first_layer_study.py`); `{study_dir}/summary.json` holds these rows.", "",
             f"Schedule: headline rows {s['epochs']} epochs on the whole train split at seeds "
             f"{', '.join(map(str, headline_seeds))}" + (f" ({'; '.join(short)})" if short else "")
             + f"; ablation rows {s['ablation_epochs']} epochs on a stratified "
             f"{s['ablation_train_subset'] or 'full'}-image train subset, seed {s['seeds'][0]}"
             + (f" (seeds {', '.join(map(str, noise_seeds))} for {', '.join(f'`{n}`' for n in noise)}, to measure "
                "this schedule's seed noise)" if noise else "") + f". Both: {s['optimizer']} "
             f"lr {s['lr']} {s['schedule']}, weight decay {s['weight_decay']}, batch {s['batch_size']}, pad-4 crop + "
             f"flip; evaluated on the {test_size:,} test images. Std is the sample std over seeds (– for one seed). "
             "Gaps are to the float-first-layer W1A2 network of the same schedule, over the seeds both rows "
             "finished. Bit-ops and parameter bits are "
             f"the first layer's (first conv and its input encoder) for one {size}×{size} image; in the W1A2 rows every "
             "quantized first layer is an input encoder feeding a binary first conv (`int8`: the 8-bit pixel "
             "codes themselves, i.e. 8-bit input with binary weights). Runtime columns: the run "
             "exported to `.pxq` and run by the integer runtime on the test images (`runtime.json`, written when "
             "the run finishes; `python experiments/redeploy_study_runs.py --time-only` re-times the finished "
             "runs' model files in one sitting, so that their speeds compare), mean over seeds; images/s at the "
             "threads recorded there, on the machine of the time. Every first layer that looks its pixels up "
             "(pixel embedding, int8, thermometer, naive) runs its first conv on the runtime as the same "
             "per-pixel-value table sums (int16 entries for int8, int8 entries for the others), so these "
             "rows' speeds measure the same work." + timed, ""]
    for tier, title in (("headline", "Headline rows"), ("ablation", "Ablations (shorter schedule)")):
        part = [r for r in rows if r["tier"] == tier]
        if part:
            lines += [f"## {title}", ""] + _table(part) + [""]
    findings = _embedding_grid(rows) + _last_layer_cost(rows) + _schedule_check(rows)
    if findings:
        lines += ["## What the ablations show", ""] + findings
    targets = _targets(rows)
    if targets:
        lines += ["## Against the targets", ""] + targets + [
            "", "The paper (Tokunaga et al., arXiv 2407.16174) reports about 1 point of top-5 lost to a "
            "pixel-embedding first layer on ImageNet, and slightly over 1 point of top-1 with first and last layers "
            "quantized on CIFAR-100. Neither data set is available offline here; the rows above ask the same "
            "question on the data and schedule stated at the top (`--data` takes the official CIFAR-100 folder "
            "and ImageNet-style trees with `--image-size`).", ""]
    if rows:
        plot_accuracy_vs_cost(rows, docs.parent / "first_layer_accuracy_vs_cost.png")
        lines += ["![accuracy against first-layer cost](first_layer_accuracy_vs_cost.png)", ""]
    gaps = gap_by_epoch(study_dir, rows)
    if gaps:
        plot_gap_by_epoch(gaps, docs.parent / "first_layer_gap_by_epoch.png")
        last = ", ".join(f"`{v}` {' → '.join(f'{x:+.2f}' for x in g[-3:])}" for v, g in gaps.items())
        lines += ["The gap to the float first layer after each epoch (test top-1 of the epoch's model; the "
                  f"per-epoch numbers swing while the learning rate is high). Last three epochs: {last}.", "",
                  "![gap by epoch](first_layer_gap_by_epoch.png)", ""]
    for name in ("w1a2-pe", "short-pe-percolour-d10-q2-thermometer"):
        record = next((_load(p) for p in sorted(study_dir.glob(f"{name}-s*/embedding.json"))), None)
        if record:
            png = f"embedding_{name}.png"
            plot_embedding_curves(record, f"learned pixel embedding, {name} (d={record['d']}, {record['bits']}-bit, "
                                          f"init {record['init']})", docs.parent / png)
            lines += [f"![learned embedding of {name}]({png})", ""]
    docs.write_text("\n".join(lines))
    return summary


def main(argv: "list | None" = None) -> int:
    p = argparse.ArgumentParser(description="render a first-layer study's summary.json, plots and markdown report")
    p.add_argument("study_dir", help="the --out folder of experiments/first_layer_study.py")
    p.add_argument("--docs", default="docs/first-layer-study.md", help="markdown file to write (plots go beside it)")
    args = p.parse_args(argv)
    try:
        rows = write_report(args.study_dir, args.docs)["rows"]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"docs": args.docs, "rows": len(rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
