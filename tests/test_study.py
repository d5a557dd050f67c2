"""The first-layer study: its plan, a resumable run on tiny data, and the report rendered from JSON."""
import json
import statistics
import sys

import pytest

import pixelq
from pixelq import ConfigError
from pixelq.models import first_layer_cost
from conftest import EXPERIMENTS, write_image_dataset

sys.path.insert(0, str(EXPERIMENTS))  # the study and its report are experiments, not the library
import first_layer_report  # noqa: E402
import first_layer_study  # noqa: E402
from first_layer_report import write_report  # noqa: E402
from first_layer_study import (ABLATION_NOISE_VARIANTS, StudySchedule, ablation_variants,  # noqa: E402
                               headline_variants, plan, run_study)


def test_headline_variants_are_the_named_rows():
    rows = {v.name: v for v in headline_variants()}
    assert {"float-net", "w1a2-float-first", "w1a2-int8-first", "w1a2-bitplane", "w1a2-thermometer", "w1a2-pe",
            "w1a2-pe-qlast"} <= set(rows)
    pe = rows["w1a2-pe"]
    assert (pe.first_layer, pe.first_layer_kwargs["d"], pe.first_layer_kwargs["bits"], pe.first_layer_kwargs["shared"],
            pe.wbits, pe.abits, pe.last_layer) == ("pixel-embedding", 10, 2, True, 1, 2, "float")
    assert rows["w1a2-pe-qlast"].last_layer == "quantized" and rows["float-net"].wbits == 32


def test_ablations_cover_the_embedding_grid_and_quantized_last_twins():
    pe = [v.first_layer_kwargs for v in ablation_variants() if v.first_layer == "pixel-embedding"]
    grid = {(k["shared"], k["d"], k["bits"], k["init"]) for k in pe}
    assert grid == {(s, d, q, i) for s in (True, False) for d in (4, 10, 16) for q in (1, 2)
                    for i in ("thermometer", "uniform")}
    # every quantized first layer at the short schedule with a float and a quantized last layer
    pairs = {(v.first_layer, json.dumps(v.first_layer_kwargs, sort_keys=True), v.last_layer) for v in ablation_variants()}
    quantized_last = {(f, k) for f, k, last in pairs if last == "quantized"}
    assert {f for f, _ in quantized_last} == {"int8", "naive", "thermometer", "bitplane", "pixel-embedding"}
    assert all((f, k, "float") in pairs for f, k in quantized_last)
    names = [v.name for v in ablation_variants()]
    assert len(names) == len(set(names))


def test_plan_runs_two_headline_seeds_then_ablations_then_further_seeds_float_network_last():
    pairs = plan(StudySchedule(seeds=(3, 4, 5)))
    headline, ablation = len(headline_variants()), len(ablation_variants())
    assert [s for _, s in pairs[:headline]] == [3] * headline and [s for _, s in pairs[headline:2 * headline]] == [4] * headline
    assert all(v.tier == "ablation" and s == 3 for v, s in pairs[2 * headline:2 * headline + ablation])
    # the ablation schedule's noise rows at the second seed, then the headline rows' further seeds
    noise = pairs[2 * headline + ablation:2 * headline + ablation + len(ABLATION_NOISE_VARIANTS)]
    assert sorted((v.name, v.tier, s) for v, s in noise) == sorted((n, "ablation", 4) for n in ABLATION_NOISE_VARIANTS)
    further = pairs[2 * headline + ablation + len(noise):]
    assert [(v.tier, s) for v, s in further] == [("headline", 5)] * headline
    assert further[-1][0].name == "float-net"  # no target reads it: its further seeds come last
    assert len(pairs) == 3 * headline + ablation + len(noise)
    assert len({(v.name, s) for v, s in pairs}) == len(pairs)
    assert len(plan(StudySchedule(seeds=(3,)))) == headline + ablation  # one seed: no noise rows
    assert plan(StudySchedule(seeds=(3, 4, 5)), tiers=("headline",)) == [p for p in pairs if p[0].tier == "headline"]


def test_first_layer_cost():
    float_net = pixelq.create_model("resnet20", in_channels=3, num_classes=10)
    pe = pixelq.create_model("resnet20", first_layer="pixel-embedding", first_layer_kwargs={"d": 10, "bits": 2},
                             wbits=1, abits=2, in_channels=3, num_classes=10)
    f, p = first_layer_cost(float_net, 32, 32), first_layer_cost(pe, 32, 32)
    assert f["macs"] == 32 * 32 * 16 * 3 * 9 and f["bops"] == f["macs"] * 32 * 32
    assert p["macs"] == 32 * 32 * 16 * 30 * 9 and p["bops"] == p["macs"] * 2 * 1
    assert p["param_bits"] == 16 * 30 * 9 * 1 + 256 * 10 * 2  # binary conv weights + 2-bit shared table


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from conftest import make_splits

    tmp = tmp_path_factory.mktemp("study")
    data = str(write_image_dataset(tmp, make_splits()))
    out = tmp / "runs"
    schedule = StudySchedule(seeds=(0, 1), epochs=1, ablation_epochs=1, ablation_train_subset=24, batch_size=16)
    only = ["w1a2-float-first", "w1a2-pe", "short-w1a2-float-first", "short-pe-percolour-d4-q1-uniform"]
    trained = run_study(out, data=data, schedule=schedule, threads=1, only=only)
    return out, data, schedule, only, trained


def test_study_trains_each_run_once(study):
    out, data, schedule, only, trained = study
    assert trained == ["w1a2-float-first-s0", "w1a2-pe-s0", "w1a2-float-first-s1", "w1a2-pe-s1",
                       "short-w1a2-float-first-s0", "short-pe-percolour-d4-q1-uniform-s0", "short-w1a2-float-first-s1"]
    assert run_study(out, data=data, schedule=schedule, threads=1, only=only) == []  # resumed: all finished
    pe = json.loads((out / "w1a2-pe-s0" / "embedding.json").read_text())
    assert len(pe["table"]) == 1 and len(pe["table"][0]) == 256 and len(pe["table"][0][0]) == 10
    deployed = json.loads((out / "w1a2-pe-s0" / "runtime.json").read_text())
    assert deployed["labels"]["differ_unexplained"] == 0
    assert not (out / "w1a2-float-first-s0" / "runtime.json").exists()  # a float first layer has no integer form


def test_retime_re_measures_the_committed_model_file_without_a_checkpoint(study, tmp_path):
    """After a runtime change, a run whose checkpoint is gone is re-timed from its model.pxq; the
    export's label comparison stays, and a moved top-1 (the labels changed) is refused."""
    import shutil

    from pixelq import ExportError
    from pixelq.data import load_dataset
    from first_layer_study import retime_runtime

    out, data = study[0], study[1]
    run = tmp_path / "w1a2-pe-s0"
    run.mkdir()
    for name in ("model.pxq", "runtime.json"):
        shutil.copy(out / "w1a2-pe-s0" / name, run / name)
    before = json.loads((run / "runtime.json").read_text())
    stale = {**before, "images_per_s": -1.0}
    (run / "runtime.json").write_text(json.dumps(stale))
    test = load_dataset(data).test
    after = retime_runtime(run, test, threads=1)
    assert after == json.loads((run / "runtime.json").read_text())
    assert after["images_per_s"] > 0 and after["runtime_top1"] == before["runtime_top1"]
    from pixelq.runtime import available_isas

    assert after["isa"] == (available_isas()[-1] if available_isas() else "numpy reference")  # speeds compare per ISA
    assert after["labels"] == before["labels"] and after["label_agreement"] == before["label_agreement"]
    (run / "runtime.json").write_text(json.dumps({**before, "runtime_top1": before["runtime_top1"] + 1.0}))
    with pytest.raises(ExportError, match="re-export"):
        retime_runtime(run, test, threads=1)


def test_study_refuses_a_finished_run_with_other_settings(study):
    out, data, schedule, only, _ = study
    longer = StudySchedule(seeds=(0, 1), epochs=2, ablation_epochs=1, ablation_train_subset=24, batch_size=16)
    with pytest.raises(ConfigError, match="different settings"):
        run_study(out, data=data, schedule=longer, threads=1, only=["w1a2-pe"])
    with pytest.raises(ConfigError, match="unknown study variant"):
        run_study(out, data=data, schedule=schedule, only=["w1a2-nonsense"])


def test_report_renders_summary_plots_and_markdown(study, tmp_path):
    out = study[0]
    docs = tmp_path / "docs" / "results.md"
    assert first_layer_report.main([str(out), "--docs", str(docs)]) == 0
    rows = {r["variant"]: r for r in json.loads((out / "summary.json").read_text())}
    assert set(rows) == set(study[3])
    pe, ref = rows["w1a2-pe"], rows["w1a2-float-first"]
    assert pe["seeds"] == [0, 1] and len(pe["top1"]) == 2 and pe["top1_std"] is not None
    assert pe["top1_mean"] == pytest.approx(sum(pe["top1"]) / 2)
    assert pe["gap_to_float_first"] == pytest.approx(pe["top1_mean"] - ref["top1_mean"])
    # the ablation reference also ran at seed 1 (this schedule's noise); a one-seed row is compared at seed 0
    short_pe, short_ref = rows["short-pe-percolour-d4-q1-uniform"], rows["short-w1a2-float-first"]
    assert short_ref["seeds"] == [0, 1] and short_pe["seeds"] == [0]
    assert short_pe["gap_to_float_first"] == pytest.approx(short_pe["top1"][0] - short_ref["top1"][0])
    text = docs.read_text()
    assert "| w1a2-pe |" in text and "## Ablations" in text and "1 epochs" in text
    assert "seed 0 (seeds 0, 1 for `short-w1a2-float-first`, to measure this schedule's seed noise)" in text
    for png in ("first_layer_accuracy_vs_cost.png", "embedding_w1a2-pe.png", "first_layer_gap_by_epoch.png"):
        assert (docs.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "at seeds 0, 1; ablation rows" in text  # every headline row has every seed
    # the gap by epoch: each epoch's test top-1 against the float first layer's, mean over seeds
    from first_layer_report import gap_by_epoch

    def top1(run):
        return [json.loads(line)["test_top1"] for line in (out / run / "metrics.jsonl").read_text().splitlines()]

    expected = [(a0 - b0 + a1 - b1) / 2 for a0, b0, a1, b1 in zip(top1("w1a2-pe-s0"), top1("w1a2-float-first-s0"),
                                                                   top1("w1a2-pe-s1"), top1("w1a2-float-first-s1"))]
    assert gap_by_epoch(out, list(rows.values())) == {"w1a2-pe": pytest.approx(expected)}


def test_report_names_headline_rows_short_of_the_seed_list(study, tmp_path):
    """A study stopped before a headline row's last seed says which rows have which seeds."""
    import shutil

    part = tmp_path / "study"
    shutil.copytree(study[0], part)
    (part / "w1a2-pe-s1" / "metrics.json").unlink()  # the run in flight: checkpoint, no result
    write_report(part, tmp_path / "results.md")
    text = (tmp_path / "results.md").read_text()
    assert "at seeds 0, 1 (`w1a2-pe` at seeds 0); ablation rows" in text
    assert "All were timed with the runtime's `" in text
    timed = json.loads((part / "w1a2-pe-s0" / "runtime.json").read_text())
    (part / "w1a2-pe-s0" / "runtime.json").write_text(json.dumps({**timed, "isa": "another-isa"}))
    write_report(part, tmp_path / "results.md")
    assert "timed with different convs (`another-isa`, `" in (tmp_path / "results.md").read_text()


def test_report_without_a_study_is_a_clear_error(tmp_path, capsys):
    assert first_layer_report.main([str(tmp_path)]) == 2
    assert "no study.json" in capsys.readouterr().err


def test_targets_weigh_each_quantized_first_layer_against_pixel_embedding():
    from first_layer_report import _targets

    def row(variant, first_layer, top1, bitops, gap=None):
        return {"variant": variant, "first_layer": first_layer, "tier": "headline", "top1_mean": top1, "seeds": [0, 1],
                "top1": [top1, top1], "gap_to_float_first": gap, "first_layer_cost": {"bops": bitops}}

    rows = [row("w1a2-float-first", "float", 80.0, 4e8, 0.0), row("w1a2-pe", "pixel-embedding", 79.5, 1e7, -0.5),
            row("w1a2-int8-first", "int8", 79.9, 3e8), row("w1a2-thermometer", "thermometer", 77.0, 1e7)]
    rows[0].update(seeds=[1, 0], top1=[80.5, 79.5])
    rows[1].update(seeds=[0, 1], top1=[79.25, 79.75])
    lines = _targets(rows)
    assert ("- `w1a2-pe`: 79.50 % over 2 seed(s), 0.50 points below `w1a2-float-first` (target ≤ 1.0: met). "
            "Gap per seed: s0 -0.25, s1 -0.75; standard error of the mean gap 0.25.") in lines
    rows[1].update(top1=[78.25, 78.75], top1_mean=78.5, gap_to_float_first=-1.5)
    assert any(line.startswith("- `w1a2-pe`: 78.50 % over 2 seed(s), 1.50 points below `w1a2-float-first` (target ≤ "
                               "1.0: not met, by 0.50).") for line in _targets(rows))
    rows[1].update(top1=[79.25, 79.75], top1_mean=79.5, gap_to_float_first=-0.5)
    assert "- pixel embedding is not ahead of: w1a2-int8-first." in lines
    assert ("  - `w1a2-int8-first`: 79.90 % (+0.40 against `w1a2-pe`) with 30x pixel embedding's first-layer "
            "bit-ops.") in lines
    assert lines[-1] == ("  - `w1a2-thermometer`: 77.00 % (-2.50 against `w1a2-pe`) with 1x pixel embedding's "
                         "first-layer bit-ops.")
    # a margin below the seed-to-seed std is called so; runtime speed is set beside bit-ops where measured
    rows[0]["top1_std"], rows[1]["top1_std"] = 0.6, 0.4
    rows[1]["runtime"], rows[2]["runtime"] = {"images_per_s": 12000.0}, {"images_per_s": 2500.0}
    rows[3]["runtime"] = {"images_per_s": 11000.0}
    lines = _targets(rows)
    assert ("  - `w1a2-int8-first`: 79.90 % (+0.40 against `w1a2-pe`; within the headline rows' mean seed std of "
            "0.50) with 30x pixel embedding's first-layer bit-ops; on the integer runtime 2,500 images/s against "
            "12,000.") in lines
    assert lines[-1] == ("  - `w1a2-thermometer`: 77.00 % (-2.50 against `w1a2-pe`) with 1x pixel embedding's "
                         "first-layer bit-ops; on the integer runtime 11,000 images/s against 12,000.")
    # a lead inside the noise is not called "ahead"; a first layer as accurate for less work is named
    rows[2].update(top1_mean=79.3, top1=[79.3, 79.3], first_layer_cost={"bops": 5e6})
    lines = _targets(rows)
    assert ("- pixel embedding's mean top-1 is above every other quantized first layer's in the headline rows, but its "
            "lead over `w1a2-int8-first` is smaller than the headline rows' mean seed std (0.50): the study does not "
            "separate them.") in lines
    assert lines[-1] == ("- `w1a2-int8-first` is as accurate as pixel embedding (within the seed noise, or better) "
                         "for fewer first-layer bit-ops, so on this data and schedule the study does not show pixel "
                         "embedding's advantage over it; its advantage over the float first layer (40x fewer "
                         "first-layer bit-ops for 0.50 points of top-1) stands.")
    rows[2]["top1_mean"] = rows[2]["top1"][0] = rows[2]["top1"][1] = 78.0
    assert "- pixel embedding is ahead of every other quantized first layer in the headline rows." in _targets(rows)
    assert not any("as accurate as pixel embedding" in line for line in _targets(rows))


def test_gaps_pair_seeds_while_a_row_has_fewer_seeds_than_its_reference():
    from first_layer_report import _gap, _last_layer_cost, _over

    ref = {"seeds": [0, 1], "top1": [80.0, 82.0], "top1_mean": 81.0}
    assert _gap({"seeds": [0], "top1": [79.0], "top1_mean": 79.0}, ref) == pytest.approx(-1.0)  # not 79 - 81
    assert _gap({"seeds": [1, 0], "top1": [81.0, 80.5], "top1_mean": 80.75}, ref) == pytest.approx(-0.25)
    assert _gap({"seeds": [2], "top1": [80.0], "top1_mean": 80.0}, ref) == pytest.approx(-1.0)  # no shared seed
    assert _gap({"seeds": [0], "top1": [80.0], "top1_mean": 80.0}, None) is None
    assert _over({"seeds": [0], "top1": [79.0], "top1_mean": 79.0}, ref) == " at seed 0"
    assert _over({"seeds": [1, 0], "top1": [81.0, 80.5], "top1_mean": 80.75}, ref) == ""
    # the last-layer table compares the same seeds too
    f = {"tier": "headline", "variant": "a", "first_layer": "int8", "first_layer_kwargs": {}, "wbits": 1, "abits": 2,
         "last_layer": "float", **ref}
    q = {**f, "variant": "a-qlast", "last_layer": "quantized", "seeds": [1], "top1": [81.5], "top1_mean": 81.5}
    assert "| headline | a | 82.00 | a-qlast | 81.50 | -0.50 at seed 1 |" in _last_layer_cost([f, q])


def test_study_and_report_on_an_imagenet_style_tree_at_one_size(tmp_path, capsys):
    """The same command on train/ + val/ folders of mixed sizes, scaled to --image-size: the run
    trains, deploys to the integer runtime, and the report costs the first layer at that size."""
    from conftest import write_imagenet_style

    write_imagenet_style(tmp_path / "imagenet")
    out = tmp_path / "runs"
    assert first_layer_study.main(["--data", str(tmp_path / "imagenet"), "--image-size", "16", "--out", str(out),
                 "--seeds", "0", "--epochs", "1", "--batch-size", "4", "--only", "w1a2-pe", "--threads", "1",
                 "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["trained"] == ["w1a2-pe-s0"]
    assert json.loads((out / "w1a2-pe-s0" / "metrics.json").read_text())["config"]["image_size"] == 16
    assert json.loads((out / "w1a2-pe-s0" / "runtime.json").read_text())["labels"]["differ_unexplained"] == 0
    (row,) = write_report(out, tmp_path / "results.md")["rows"]
    model = pixelq.create_model("resnet20", first_layer="pixel-embedding", first_layer_kwargs=row["first_layer_kwargs"],
                                wbits=1, abits=2)
    assert row["image_size"] == 16 and row["first_layer_cost"] == first_layer_cost(model, 16, 16)
    assert "one 16×16 image" in (tmp_path / "results.md").read_text()


def test_report_reads_each_ablation_factor_from_matched_pairs():
    """A synthetic grid whose top-1 is a known sum of effects: the report recovers each effect."""
    from first_layer_report import _embedding_grid, _last_layer_cost

    def row(variant, first_layer, kwargs, top1, last="float", tier="ablation", std=None):
        return {"variant": variant, "tier": tier, "first_layer": first_layer, "first_layer_kwargs": kwargs, "wbits": 1,
                "abits": 2, "last_layer": last, "top1_mean": top1, "top1_std": std, "gap_to_float_first": top1 - 80.0,
                "seeds": [0], "top1": [top1],
                "first_layer_cost": {"bops": 1e6 * kwargs.get("d", 1) * kwargs.get("bits", 1)}}

    rows = [row("short-w1a2-float-first", "float", {}, 80.0)]
    for v in ablation_variants():
        k = v.first_layer_kwargs
        if v.first_layer == "pixel-embedding" and v.last_layer == "float":
            top1 = 70 - (not k["shared"]) - 0.5 * (k["init"] == "uniform") + k["bits"] + k["d"] / 10
            rows.append(row(v.name, v.first_layer, k, top1))
    rows.append(row("short-w1a2-naive2", "naive", {"bits": 2}, 75.0))
    rows.append(row("short-w1a2-naive2-qlast", "naive", {"bits": 2}, 74.25, last="quantized"))
    rows.append(row("short-w1a2-bitplane-qlast", "bitplane", {}, 70.0, last="quantized"))  # no float-last twin
    rows += [row("w1a2-pe", "pixel-embedding", {"d": 10}, 79.0, tier="headline", std=0.2),
             row("w1a2-pe-qlast", "pixel-embedding", {"d": 10}, 78.5, last="quantized", tier="headline", std=0.4)]
    grid = _embedding_grid(rows)
    assert "| 10 | 2 | 73.00 (-7.00) | 72.50 (-7.50) | 72.00 (-8.00) | 71.50 (-8.50) | 2e+07 |" in grid
    assert "- per-colour tables instead of one shared table: -1.00 points on average over 12 pair(s) " \
           "(from -1.00 to -1.00; standard error of the mean 0.00)." in grid
    assert any(line.startswith("- random uniform initialisation instead of thermometer: -0.50 points") for line in grid)
    assert any(line.startswith("- Q = 2 bits instead of 1: +1.00 points on average over 12 pair(s)") for line in grid)
    assert any(line.startswith("- d = 16 instead of 10: +0.60 points on average over 8 pair(s)") for line in grid)
    assert "- For scale: at the full schedule the std over seeds averages 0.30 points (2 rows); a difference of that " \
        "size between two one-seed rows is noise." in grid
    assert not any("this schedule" in line for line in grid)
    # an ablation row run at a second seed: marked, measures this schedule's noise, compared at the shared seed
    ref, cell = rows[0], next(r for r in rows if r["variant"] == "short-pe-shared-d10-q2-thermometer")
    ref.update(seeds=[0, 1], top1=[80.0, 82.0], top1_mean=81.0, top1_std=1.41)
    cell.update(seeds=[0, 1], top1=[cell["top1_mean"], 90.0], top1_mean=(cell["top1_mean"] + 90) / 2, top1_std=2.0)
    grid = _embedding_grid(rows)
    assert "| 10 | 2 | 81.50* (-7.00) |" in "\n".join(grid)
    assert "- per-colour tables instead of one shared table: -1.00 points on average over 12 pair(s) " \
           "(from -1.00 to -1.00; standard error of the mean 0.00)." in grid
    assert any(line.startswith("- For scale: at this schedule the std over seeds averages 1.71 points (2 rows)")
               for line in grid)
    # one per-colour cell 1.2 points higher: that factor's pairs spread, and the standard error says how much
    odd = next(r for r in rows if r["variant"] == "short-pe-percolour-d4-q1-thermometer")
    odd.update(top1=[odd["top1"][0] + 1.2], top1_mean=odd["top1_mean"] + 1.2)
    diffs = [-1.0] * 11 + [0.2]
    assert (f"- per-colour tables instead of one shared table: -0.90 points on average over 12 pair(s) (from -1.00 "
            f"to +0.20; standard error of the mean {statistics.stdev(diffs) / 12 ** 0.5:.2f}).") in _embedding_grid(rows)
    last = _last_layer_cost(rows)
    assert "| ablation | short-w1a2-naive2 | 75.00 | short-w1a2-naive2-qlast | 74.25 | -0.75 |" in last
    assert "| headline | w1a2-pe | 79.00 | w1a2-pe-qlast | 78.50 | -0.50 |" in last
    assert not any("bitplane" in line for line in last)


def test_report_checks_whether_the_short_schedule_ranks_first_layers_like_the_full_one():
    from first_layer_report import _schedule_check

    def row(variant, tier, first_layer, top1, gap, last="float"):
        return {"variant": variant, "tier": tier, "first_layer": first_layer, "first_layer_kwargs": {}, "wbits": 1,
                "abits": 2, "last_layer": last, "top1_mean": top1, "gap_to_float_first": gap}

    rows = [row("w1a2-float-first", "headline", "float", 80.0, 0.0), row("w1a2-int8-first", "headline", "int8", 79.0, -1.0),
            row("w1a2-thermometer", "headline", "thermometer", 78.0, -2.0),
            row("w1a2-bitplane", "headline", "bitplane", 77.0, -3.0),
            row("short-w1a2-float-first", "ablation", "float", 55.0, 0.0),
            row("short-w1a2-int8-first", "ablation", "int8", 50.0, -5.0),
            row("short-w1a2-thermometer", "ablation", "thermometer", 52.0, -3.0),  # swaps places with int8
            row("short-w1a2-bitplane", "ablation", "bitplane", 45.0, -10.0),
            row("short-w1a2-bitplane-qlast", "ablation", "bitplane", 44.0, -11.0, last="quantized")]  # no headline twin
    lines = _schedule_check(rows)
    assert "| w1a2-thermometer | -2.00 | short-w1a2-thermometer | -3.00 |" in lines
    assert not any("qlast" in line or "float-first |" in line for line in lines)
    assert any(line.startswith("2 of 3 pairs of these rows are in the same order at both schedules (a tie is in "
                               "none). The float first "
                               "layer reaches 55.00 % at the ablation schedule against 80.00 %") for line in lines)
    assert _schedule_check(rows[:6]) == []  # one twin (int8): nothing to order
    rows[3]["gap_to_float_first"] = -2.004  # ties bit-plane with thermometer as shown: that pair is in no order
    assert any(line.startswith("1 of 3 pairs") for line in _schedule_check(rows))
