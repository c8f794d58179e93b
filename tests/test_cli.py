"""The real command lines, end to end, on a small configuration of real offline data."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import accuracy_from_store

from weightsep.cli import main, parser
from weightsep.config_docs import commands

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e  # every test runs the real command lines in subprocesses
SMALL = ["--train-steps", "300", "--fisher-samples", "64"]


def cli(*args, check=True, script=("-m", "weightsep")):
    result = subprocess.run([sys.executable, *script, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    if check and result.returncode:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def assert_outcome(summary: dict, store: Path) -> None:
    """What the main job exists to produce, not just that it ran. Bound (two DNNs, 300 stand-alone
    steps, 200 joint steps, no exclusive page): no DNN loses more than 3 pp; the no-sharing control,
    which only trains further, loses at most 1 pp and is far above chance."""
    for row in summary["rows"]:
        assert row["packed_accuracy"] == pytest.approx(accuracy_from_store(store, row["name"]), abs=1e-9)
        assert row["difference_pp"] >= -3.0, row
        assert row["control_accuracy"] >= row["standalone_accuracy"] - 0.01, row
        assert row["control_accuracy"] > 0.5, row
        assert -100 <= row["control_val_gain_pp"] <= 100, row  # what the control's extra training saw on validation


def legacy(*args, check=True):
    return cli(*args, check=check, script=("WeightSeparation.py",))


@pytest.mark.parametrize("command", commands(parser()))  # every command the parser has, quantize included
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_:  # in process: argparse's --help is under test, not the interpreter
        main([command, "--help"])
    assert exit_.value.code == 0 and "usage" in capsys.readouterr().out


def test_help_of_the_legacy_command_line():
    assert "-mode" in legacy("--help").stdout


@pytest.mark.slow
def test_main_job_then_legacy_modes_then_recovery(cache_with_data, tmp_path):
    store, results = tmp_path / "state", tmp_path / "results"
    out = cli("run", "--dnns", "satellite", "letters", *SMALL, "--steps", "200", "--eval-every", "50",
              "--store", store, "--results", results).stdout
    assert "ratio:" in out and "by bytes" in out
    summary = json.loads((results / "summary.json").read_text())
    assert [r["name"] for r in summary["rows"]] == ["satellite", "letters"]
    totals = summary["totals"]  # S follows the DNNs: satellite's 124 pages; 124,392 weights then reach 1.96x, not 6x
    assert totals["shared_pages"] == 124 and totals["packed_weights"] == (124 + totals["exclusive_pages"]) * 512
    assert totals["ratio_warning"].startswith("ratio 6 asked, 1.96x reached: DNN 'satellite' has 124 pages")
    assert f"warning:     {totals['ratio_warning']}" in out
    assert_outcome(summary, store)
    for row in summary["rows"]:  # the printed table shows the measured figures
        line = next(line for line in out.splitlines() if line.startswith(row["name"]))
        assert f"{100 * row['packed_accuracy']:.2f}" in line and f"{100 * row['control_accuracy']:.2f}" in line
    assert (results / "summary.md").read_text().startswith("# weightsep summary")
    shown = cli("letters", "--store", store, "--plot", tmp_path / "vnn.png", script=("vnn.py",)).stdout
    assert "exclusive" in shown and "page table" in shown and (tmp_path / "vnn.png").stat().st_size > 0

    flags = ["--store", store]
    assert "satellite" in legacy("-mode=l", *flags).stdout
    assert "packed test accuracy" in legacy("-mode=e", "-vnn_name=letters", *flags).stdout
    legacy("-mode=t", "-vnn_name=letters", "-iter=20", *flags)
    legacy("-mode=r", "-vnn_name=satellite", *flags)
    assert cli("list", "--names", *flags).stdout.split() == ["letters"]
    legacy("-mode=a", "-network_path=satellite", *SMALL, *flags)
    assert cli("list", "--names", *flags).stdout.split() == ["letters", "satellite"]
    assert "124 shared pages" in cli("list", *flags).stdout  # the store keeps its S; a new one of -mode=a is WS's 128
    legacy("-mode=a", "-network_path=letters", *SMALL, "--store", tmp_path / "new")
    assert "128 shared pages" in cli("list", "--store", tmp_path / "new").stdout

    # a corrupt file is named, nothing is overwritten, and the previous good state comes back
    manifest = json.loads((store / "manifest.json").read_text())
    victim = store / next(v["file"]["file"] for v in manifest["vnns"] if v["name"] == "satellite")
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF
    victim.write_bytes(bytes(data))
    bad = cli("list", *flags, check=False)
    assert bad.returncode == 2 and victim.name in bad.stderr
    cli("restore", *flags)
    assert cli("list", "--names", *flags).stdout.split() == ["letters"]


def test_bad_input_gives_a_clear_error_and_nonzero_exit(cache_with_data, tmp_path):
    bad = cli("add", "no-such-dnn", "--store", tmp_path / "s", check=False)
    assert bad.returncode == 2 and "unknown DNN 'no-such-dnn'" in bad.stderr
    assert not (tmp_path / "s").exists()
    missing = cli("list", "--store", tmp_path / "nothing", check=False)
    assert missing.returncode == 2 and "nothing" in missing.stderr


def test_a_new_dnn_is_a_folder_with_no_code_edit(cache_with_data, tmp_path):
    folder = tmp_path / "plugins" / "letters_small"
    folder.mkdir(parents=True)
    (folder / "dnn.py").write_text(
        "from weightsep.dnn import Dataset, Split\n"
        "from weightsep.model import TemplateNet\n"
        "import numpy as np\n"
        "META = dict(task='letters, smaller model', source='suite/letters data', real=True)\n"
        "TRAIN = dict(steps=200)\n"
        "def build_model():\n"
        "    return TemplateNet((16,), [], dense=[64], classes=26)\n"
        "def load_data(data_dir):\n"
        "    d = np.load(data_dir / 'letters.npz')\n"
        "    return Dataset(*(Split(d[f'x_{s}'], d[f'y_{s}']) for s in ('train', 'val', 'test')))\n")
    store = tmp_path / "state"
    out = cli("add", "letters_small", "--dnn-folder", tmp_path / "plugins", "--store", store, "--fisher-samples", "32").stdout
    assert "added letters_small" in out
    assert "letters_small" in cli("list", "--store", store).stdout


@pytest.mark.slow
def test_formation_and_optimization_scripts(cache_with_data, tmp_path):
    env_flags = f"--store {tmp_path / 'state'} --train-steps 200"
    run = lambda *cmd: subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,  # noqa: E731
                                      env={**__import__("os").environ, "WS_FLAGS": env_flags, "PYTHON": sys.executable})
    formed = run("bash", "formation.sh", "-i", "10", "satellite", "letters")
    assert formed.returncode == 0, formed.stderr
    optimized = run("bash", "optimization.sh", "-r", "1", "-t", "1", "-i", "10")
    assert optimized.returncode == 0, optimized.stderr
    assert "1-th evaluation" in optimized.stdout and optimized.stdout.count("packed test accuracy") == 2


@pytest.mark.slow
def test_seeds_run_the_whole_pipeline_per_seed_and_report_the_spread(cache_with_data, tmp_path):
    store, results = tmp_path / "state", tmp_path / "results"
    out = cli("run", "--dnns", "satellite", "letters", "--train-steps", "100", "--fisher-samples", "64", "--steps", "20",
              "--eval-every", "10", "--ratio", "1.5", "--seeds", "0", "1", "--store", store, "--results", results).stdout
    assert "== seed 1" in out and "over 2 seeds" in out and "worst DNN" in out
    assert "packed - no-sharing control: mean" in out  # the control is on by default, over seeds too
    summary = json.loads((results / "summary.json").read_text())
    assert [s["seed"] for s in summary["seeds"]] == [0, 1] and summary["aggregate"]["seeds"] == [0, 1]
    first, second = (s["rows"][0]["standalone_accuracy"] for s in summary["seeds"])
    assert first != second  # stand-alone training is seeded too
    ratio = summary["aggregate"]["totals"]["ratio_by_count"]
    assert ratio["min"] <= ratio["mean"] <= ratio["max"] and ratio["min"] >= 1.5  # the budget holds in every seed
    assert (store / "manifest.json").is_file() and (tmp_path / "state-seed1" / "manifest.json").is_file()
    assert "## Over seeds" in (results / "summary.md").read_text()


@pytest.mark.slow
def test_separation_experiment_puts_published_and_budget_in_one_table(cache_with_data, tmp_path):
    out = cli("--dnns", "satellite", "letters", "--seeds", "0", "--steps", "20", "--ratio", "1.5", "--train-steps", "100",
              "--results", tmp_path, script=("-m", "experiments.separation")).stdout
    assert "| published |" in out and "| budget |" in out and "Fisher 90%" in out
    assert json.loads((tmp_path / "separation.json").read_text())["seeds"] == [0]


def test_max_loss_searches_from_the_smallest_store_it_can_reach_and_reports_every_size_tried(cache_with_data, tmp_path):
    from weightsep import bound
    from weightsep.pack import PackConfig

    store, results = tmp_path / "state", tmp_path / "results"
    out = cli("run", "--dnns", "satellite", "letters", *SMALL, "--steps", "90", "--eval-every", "30",
              "--max-loss", "0.25", "letters=0.5", "--store", store, "--results", results).stdout
    summary = json.loads((results / "summary.json").read_text())
    search = summary["max_loss"]
    assert search["max_loss_pp"] == {"satellite": 0.25, "letters": 0.5} and set(search["noise_pp"]) == {"satellite", "letters"}
    rounds = search["rounds"]
    # two DNNs cannot reach the main job's 6x: the first pass is the smallest store
    assert rounds[0]["exclusive_pages"] == 0 and rounds[0]["packed_weights"] == 124 * 512
    assert 1 <= len(rounds) <= bound.MAX_PASSES
    tried = [(r["ratio"], max(r["over_pp"].values())) for r in rounds]
    sizes = {n: summary["rows"][i]["weights"] for i, n in enumerate(("satellite", "letters"))}
    assert all(bound.next_ratio(tried[:k], *bound.limits(bound.start(PackConfig(), sizes), sizes)) == tried[k][0]
               for k in range(1, len(tried)))  # each pass where the rule says
    kept = [r for r in rounds if max(r["over_pp"].values()) <= 0]
    chosen = min(kept, key=lambda r: r["packed_weights"]) if kept else max(rounds, key=lambda r: r["packed_weights"])
    assert summary["totals"]["packed_weights"] == chosen["packed_weights"]  # the store is the size kept
    assert "ratio_warning" not in summary["totals"]  # no ratio was asked
    assert "max-loss:    within 0.25 / 0.5 pp" in out and " -> ".join(f"{r['ratio']:.2f}" for r in rounds) in out
    assert_outcome(summary, store)


@pytest.mark.parametrize("flags, message", [
    (["--max-loss", "x"], "a loss bound is PP or NAME=PP"),
    (["--max-loss", "1", "--ratio", "4"], "--ratio and --max-loss both size the store"),
    (["--max-loss", "1", "2"], "give PP at most once"),
    (["--max-loss", "nope=1"], "not in the run: nope"),
    (["--max-loss", "-1"], "--max-loss -1.0: a loss bound"),
    (["--max-loss", "1", "--no-control"], "drop --no-control"),
])
def test_a_max_loss_that_cannot_be_used_is_one_line_and_exit_2(flags, message, tmp_path):
    result = cli("run", "--dnns", "satellite", "letters", *flags, "--store", tmp_path / "s", "--results", tmp_path / "r",
                 check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "s").exists()
