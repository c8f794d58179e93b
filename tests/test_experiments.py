"""The experiments package: the harness's statistics and caching keys, each experiment's pure parts,
discovery, the CLI's errors, and `all --quick` end to end (the test the issue asks for)."""
import functools
import json
import math
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from experiments import budget, harness, report, runs, scaling
from weightsep import files
from weightsep.dnn import data_dir, suite

REPO = Path(__file__).resolve().parent.parent


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "experiments", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def in_process(capsys, *args):
    """`python -m experiments ARGS` through its main in this process: exit status and captured output
    (an exception escaping it fails the test: a traceback on the command line)."""
    from experiments.__main__ import main

    capsys.readouterr()
    try:
        status = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        status = 0 if e.code is None else e.code
    out = capsys.readouterr()
    return types.SimpleNamespace(returncode=status, stdout=out.out, stderr=out.err)


def test_stats_mean_sample_std_min_max():
    s = harness.stats([1.0, 2.0, 3.0, None])
    assert (s["mean"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    assert math.isclose(s["std"], 1.0)
    assert harness.stats([])["mean"] is None


def rows(values):
    return [{"seed": i, "mean_difference_pp": v} for i, v in enumerate(values)]


def test_paired_calls_consistent_differences_beyond_noise_and_sign_flips_within():
    base = rows([0.0, 1.0, -1.0])
    clear = harness.paired(rows([2.0, 3.1, 0.9]), base)
    assert math.isclose(clear["mean"], 2.0) and not clear["noise"]
    flipping = harness.paired(rows([1.0, 0.0, -0.5]), base)  # +1, -1, +0.5
    assert flipping["noise"]
    assert harness.paired(rows([5.0]), rows([0.0]))["noise"]  # one seed says nothing about noise
    assert harness.paired(rows([1.0, 2.0]), rows([0.0]))["n"] == 1  # only the seeds both have


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(2.0, 1.0), (3.0, 0.5), (2.5, 0.2), (1.0, 1.0), (3.0, -1.0)]
    assert budget.pareto(points) == [0, 1]


def test_scaling_subsets_are_seeded_distinct_and_end_with_all():
    dnns = tuple(f"d{i}" for i in range(10))
    out = scaling.subsets(dnns)
    assert out == scaling.subsets(dnns)
    assert [n for n, _ in out] == [2, 2, 3, 3, 5, 5, 7, 7, 10]
    assert out[-1] == (10, dnns)
    assert all(len(set(d)) == n and set(d) <= set(dnns) for n, d in out)
    assert [n for n, _ in scaling.subsets(dnns[:3], 1)] == [2, 3]


def test_scaling_holds_the_ratio_and_exclusive_pages_per_dnn_where_they_can_be_reached():
    from weightsep.pages import n_pages
    from weightsep.separation import exclusive_budget

    sizes = [63_875, 65_076, 59_650, 59_626, 60_986, 65_076, 63_406, 63_099, 64_698, 63_087]
    for n in (2, 5, 7, 10):
        for ratio, per_dnn in scaling.SERIES:
            s = scaling.shared_pages(sizes[:n], ratio, per_dnn)
            largest = max(n_pages(w, 512) for w in sizes[:n])
            if s is None:  # a DNN's pages lie on distinct shared pages: S >= its pages but the exclusive ones
                assert int(sum(sizes[:n]) // (ratio * 512)) - per_dnn * n < largest - per_dnn
                continue
            assert exclusive_budget(sizes[:n], 512, s, ratio) == per_dnn * n and s >= largest - per_dnn
    assert scaling.shared_pages(sizes[:2], 1.8, 7) is not None and scaling.shared_pages(sizes[:2], 6.0, 2) is None


def test_setting_key_follows_what_changes_the_run_not_the_label():
    scale = harness.Scale(dnns=("dna", "letters"))
    a = harness.Setting("x", pack={"matching": "greedy"})
    assert a.key(scale, 0) == harness.Setting("y", pack={"matching": "greedy"}).key(scale, 0)
    assert a.key(scale, 0) != a.key(scale, 1)
    assert a.key(scale, 0) != harness.Setting("x", pack={"matching": "optimal"}).key(scale, 0)
    assert a.key(scale, 0) != a.key(harness.Scale(dnns=("dna", "letters"), steps=7), 0)
    assert a.key(scale, 0) != a.key(harness.Scale(dnns=("dna", "letters"), train_steps=7), 0)
    assert a.key(scale, 0) != harness.Setting("x", pack={"matching": "greedy"}, measure=True).key(scale, 0)
    assert a.key(scale, 0) == a.key(harness.Scale(dnns=("dna", "letters"), runs="elsewhere", workers=1), 0)


def test_a_run_is_keyed_on_the_stand_alone_models_it_starts_from(monkeypatch):
    """A DNN folder's changed code or data (which retrains its model) runs its settings again."""
    scale, a = harness.Scale(dnns=("dna", "letters")), harness.Setting("x")
    before = a.key(scale, 0)
    real = runs.model_keys
    monkeypatch.setattr(runs, "model_keys", lambda names, steps, seed: {**real(names, steps, seed), "dna": "dna-retrained"})
    assert a.key(scale, 0) != before


def test_the_code_key_keeps_runs_across_docstring_comment_and_unimported_edits(tmp_path):
    """files.behaviour_hash: the syntax of the entry file and the package modules it imports, at any depth."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    entry = tmp_path / "entry.py"
    entry.write_text("from pkg import a\n")
    (pkg / "a.py").write_text('"""A."""\nfrom . import b\n\ndef f():\n    """Doc."""\n    return 1  # one\n')
    (pkg / "b.py").write_text("def g():\n    from pkg.c import h\n    return h\n")
    (pkg / "c.py").write_text("h = 2\n")
    (pkg / "cli.py").write_text("x = 1\n")
    assert [p.name for p in files.imported_sources(entry, pkg)] == ["entry.py", "a.py", "b.py", "c.py"]
    before = files.behaviour_hash(entry, pkg)
    (pkg / "a.py").write_text('"""A, reworded."""\nfrom . import b\n\n\ndef f():\n    return 1  # the number one\n')
    (pkg / "cli.py").write_text("x = 2\n")
    assert files.behaviour_hash(entry, pkg) == before
    (pkg / "c.py").write_text("h = 3\n")  # imported lazily, two levels down
    assert files.behaviour_hash(entry, pkg) != before


def test_the_command_line_keeps_runs_with_the_results_and_a_smoke_run_in_the_cache(tmp_path, monkeypatch):
    from experiments import __main__ as cli

    seen = []
    monkeypatch.setattr(report, "run", lambda name, scale, fresh, results: seen.append(scale.runs) or tmp_path / "x.png")
    assert cli.main(["overlap", "--results", str(tmp_path)]) == 0
    assert cli.main(["overlap", "--quick", "--results", str(tmp_path)]) == 0
    assert seen == [str(tmp_path / "experiments" / "runs"), None]


def test_the_configs_take_the_scale_budget_and_the_setting_changes():
    scale = harness.Scale(dnns=("a",), steps=50)
    pack, fisher, opt = harness.configs(harness.Setting("x", pack={"page_size": 128}, optimize={"lam": 1.0}), scale, 3)
    assert (pack.page_size, pack.seed, fisher.seed, opt.seed, opt.steps, opt.lam) == (128, 3, 3, 3, 50, 1.0)


def test_experiments_run_at_the_main_jobs_budget_and_check_interval_by_default():
    from weightsep.optimize import OptimizeConfig

    _, _, opt = harness.configs(harness.Setting("x"), harness.Scale(dnns=("a",)), 0)
    assert (opt.steps, opt.eval_every) == (OptimizeConfig().steps, OptimizeConfig().eval_every)
    assert harness.check_interval(40) == 4  # a short budget still gets 10 checks


def test_page_sizes_are_compared_at_equal_bytes():
    """Each P's ratio by count makes pages plus page tables take what P=512 takes at ratio 6 (to a page)."""
    from experiments import page_size
    from weightsep.pack import PackConfig
    from weightsep.pages import n_pages
    from weightsep.precision import TABLE_ENTRY_BYTES
    from weightsep.separation import exclusive_budget

    sizes = [63_875, 65_076, 59_650, 59_626, 60_986, 65_076, 63_406, 63_099, 64_698, 63_087]

    def packed_bytes(p: int, ratio: float) -> int:
        shared = page_size.SHARED_WEIGHTS // p
        pages = shared + exclusive_budget(sizes, p, shared, ratio)
        return 4 * pages * p + sum(n_pages(n, p) for n in sizes) * TABLE_ENTRY_BYTES

    target = packed_bytes(PackConfig.page_size, PackConfig.ratio)
    for p in page_size.SIZES:
        ratio = page_size.equal_bytes_ratio(sizes, p)
        assert abs(packed_bytes(p, ratio) - target) <= 4 * max(p, PackConfig.page_size), p
        assert (ratio > PackConfig.ratio) == (p < PackConfig.page_size)  # small pages: more table, fewer page bytes


def test_experiments_are_discovered_in_report_order():
    names = report.experiments()
    assert names == ["scaling", "page_size", "optimizers", "overlap", "matching", "fisher", "budget", "switching",
                     "paper_gap", "quantization", "standalone", "defaults", "max_loss", "spread"]
    assert report.in_all() == names[:-6]  # paper_gap to spread: their own budgets, DNNs or seeds
    for name in names:
        mod = report.module(name)
        assert mod.TITLE and mod.QUESTION.endswith("?") and callable(mod.run) and callable(mod.plot)


def test_a_sections_setup_names_the_commit_its_json_records():
    result = {"date": "2026-12-05 16:00", "commit": {"sha": "0123456789abcdef", "dirty": True}}
    assert report.made(result) == "2026-12-05 16:00, commit 0123456 with uncommitted changes"
    assert report.made({**result, "commit": None}) == "2026-12-05 16:00"


def test_docs_experiments_lists_every_experiment_by_its_section():
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", (REPO / "docs" / "experiments.md").read_text(), re.M)
    assert [(int(n), name) for n, name in rows] == [(report.module(n).SECTION, n) for n in report.experiments()]


def test_anchor_is_the_code_hosts_heading_anchor():
    assert report.anchor("Optimisers: joint, round-robin, no sharing") == "optimisers-joint-round-robin-no-sharing"


def test_cli_errors_name_the_problem_without_a_traceback(tmp_path, capsys):
    """In process (the real process's exit status and stderr: test_bad_input's subprocess cases)."""
    cli = functools.partial(in_process, capsys)
    unknown = cli("matching", "--dnns", "nosuch", "--quick", "--results", tmp_path)
    assert unknown.returncode == 2 and "nosuch" in unknown.stderr and "Traceback" not in unknown.stderr
    empty = cli("report", "--results", tmp_path)
    assert empty.returncode == 2 and "no experiment results" in empty.stderr and "Traceback" not in empty.stderr
    bad = cli("nosuch")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    steps = cli("matching", "--steps", "0")
    assert steps.returncode == 2 and "--steps must be >= 1" in steps.stderr


def needs_suite_data():
    missing = [n for n in harness.QUICK_DNNS if not (data_dir() / f"{n}.npz").exists()]
    if missing:
        pytest.skip(f"offline data not prepared in {data_dir()} (run ./setup.sh): {', '.join(missing)}")


@pytest.mark.slow
@pytest.mark.e2e
def test_all_quick_writes_every_experiment_and_a_report_whose_plots_exist(tmp_path):
    """The whole package on three DNNs, end to end, from no cached run (--fresh)."""
    needs_suite_data()
    assert set(harness.QUICK_DNNS) <= set(suite())
    result = cli("all", "--quick", "--fresh", "--results", tmp_path, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "REPORT.md").read_text()
    for name in report.in_all():
        out = json.loads((tmp_path / "experiments" / f"{name}.json").read_text())
        assert out["rows"] and out["answer"] and "\n|---" in out["table"]
        assert "nan" not in out["answer"].lower()
        assert "commit" in out  # files.source_commit: None only outside a git checkout
        assert (tmp_path / "experiments" / f"{name}.csv").read_text().count("\n") >= 2
        png = tmp_path / "experiments" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"](experiments/{name}.png)" in text and out["answer"] in text
    second = cli("report", "--results", tmp_path)  # the report alone runs nothing and writes the same file
    assert second.returncode == 0 and (tmp_path / "REPORT.md").read_text() == text


@pytest.mark.slow
@pytest.mark.e2e
def test_paper_mode_runs_on_the_paper_dnns_whose_data_is_here(tmp_path):
    """--paper on mnist + fmnist (the authors' checkpoints from the fixtures), a tiny budget."""
    fixtures = Path(os.environ.get("WEIGHTSEP_FIXTURES", REPO.parent / "shared" / "fixtures" / "originals"))
    if not (fixtures / "ws").is_dir():
        pytest.skip(f"no originals' fixtures in {fixtures}")
    present = harness.paper_dnns_present()
    assert {"mnist", "fmnist"} <= set(present)
    result = cli("matching", "--paper", "--quick", "--steps", "4", "--seeds", "0", "--results", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "experiments" / "paper" / "matching.json").read_text())
    assert out["scale"]["dnns"] == present and out["scale"]["paper"]


@pytest.mark.slow
@pytest.mark.e2e
def test_paper_gap_runs_every_variant_and_dose_and_says_what_the_data_explains(tmp_path):
    """`paper_gap --quick` on the authors' mnist and fmnist checkpoints, two seeds: every variant, every
    training-set size, the answer's explained and remaining gap, and the plot."""
    fixtures = Path(os.environ.get("WEIGHTSEP_FIXTURES", REPO.parent / "shared" / "fixtures" / "originals"))
    if not (fixtures / "ws").is_dir():
        pytest.skip(f"no originals' fixtures in {fixtures}")
    from experiments import paper_gap
    result = cli("paper_gap", "--quick", "--seeds", "0", "1", "--results", tmp_path, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "experiments" / "paper_gap.json").read_text())
    assert {r["key"] for r in out["rows"]} == {*paper_gap.VARIANTS, "test selection"}
    assert all(r["seeds"] == 2 for r in out["rows"])
    sizes = {(r["dnn"], r["images"]) for r in out["dose_rows"]}
    assert {(n, i) for n, doses in paper_gap.DOSES.items() for i in doses} <= sizes
    assert "would explain" in out["answer"] and "of the gap" in out["answer"] or "cover the whole gap" in out["answer"]
    assert (tmp_path / "experiments" / "paper_gap.png").stat().st_size > 10_000


def test_paper_gap_resizes_the_training_set_from_a_subset_to_all_but_1000_validation_images():
    from experiments import paper_gap
    from weightsep.dnn import Dataset, Split

    def split(n, offset):
        x = (offset + np.arange(n, dtype=np.float32)).reshape(n, 1)
        return Split(x, (np.arange(n) % 10).astype(np.int64))

    data = Dataset(split(5000, 0), split(5000, 10_000), split(100, 50_000))
    more = paper_gap.resized(data, 9000)
    assert len(more.train.y) == 9000 and len(more.val.y) == 1000 and more.test is data.test
    moved = set(more.train.x[5000:, 0].tolist())
    kept = set(more.val.x[:, 0].tolist())
    assert not moved & kept and moved | kept == set(data.val.x[:, 0].tolist())  # every image once
    assert np.array_equal(more.train.y[5000:], (more.train.x[5000:, 0].astype(np.int64) - 10_000) % 10)  # pairs kept
    some = paper_gap.resized(data, 2000)  # a seeded subset; validation as it was
    assert len(some.train.y) == 2000 and some.val is data.val and set(some.train.x[:, 0]) <= set(data.train.x[:, 0])
    assert np.array_equal(paper_gap.resized(data, 2000).train.x, some.train.x)
    assert len(paper_gap.resized(data, 7000).train.y) == 7000 and len(paper_gap.resized(data, 7000).val.y) == 3000
    with pytest.raises(ValueError, match="9,001 training images"):
        paper_gap.resized(data, 9001)


def test_paper_gap_slope_is_pp_per_doubling_of_the_training_set():
    from experiments import paper_gap

    rows = [{"images": n, "values": [90 + 0.5 * math.log2(n / 1000) + e for e in (-0.1, 0.1)]} for n in (1000, 4000, 16000)]
    fit = paper_gap._slope(rows)
    assert fit["pp_per_doubling"] == pytest.approx(0.5) and fit["points"] == 6 and 0 < fit["ci95"] < 0.2


def test_a_sections_command_reruns_its_scale():
    assert report.flags(harness.Scale.default()) == ""
    assert report.flags(harness.Scale.default(steps=600, seeds=(0, 1))) == " --seeds 0 1 --steps 600"
    assert report.flags(harness.Scale.default(quick=True, train_steps=50)) == " --quick --train-steps 50"


def test_an_experiments_default_seeds_are_a_tuple_of_seeds():
    """`SEEDS` in an experiment module replaces the scale's seeds when --seeds is not given (__main__)."""
    for name in report.experiments():
        seeds = getattr(report.module(name), "SEEDS", None)
        assert seeds is None or (isinstance(seeds, tuple) and all(isinstance(s, int) for s in seeds)), name
