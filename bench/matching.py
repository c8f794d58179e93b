"""Matching benchmark: cost, occupancy layout and time of the three matchers (weightsep.matching).

Cases, all in NWV mode (everything shared, S = pages of the largest DNN, first DNN identity-mapped):

* the five NWV DNNs (authors' weights and Fisher, as given), added mnist gsc gtsrb cifar10 svhn.
  Step by step, all matchers see the SAME prior state, advanced with the greedy (the paper-faithful
  path), so the per-DNN ratios compare the matchers on identical inputs. Then whole packings, each
  matcher advancing its own state, which is what a run of each method would produce.
* ten synthetic DNNs with the WS paper's ten published weight counts (64,670-72,012; 667,582 in
  all), weights N(0, 0.1^2), per-weight Fisher lognormal(-6, 2): no real structure, so its costs say
  little; it is there for the 10-DNN matching time. State advanced with the greedy.

Shared pages hold their first occupant's weights and accumulate the Fisher of all occupants.
Times are medians over --repeat runs of one matcher call (cost matrix included), one BLAS thread.

    python -m bench.matching                          # writes results/matching.json
    python -m bench.matching --page-sizes 100 --repeat 3 --no-synthetic
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from bench.timing import measure, write_result
from dnnkit.originals import NWV_ORDER, load_nwv_dnn
from weightsep.matching import MATCHERS, SharedState, empty_state, match, place
from weightsep.pages import to_pages
from weightsep.paths import fixtures_dir

WS_WEIGHT_COUNTS = (64_670, 65_402, 69_966, 68_639, 64_670, 72_012, 65_101, 65_154, 66_854, 65_114)  # docs/algorithms.md §4
SHORT = {"greedy": "greedy", "optimal-occupancy": "opt-occ", "optimal": "optimal"}

Pages = tuple[str, np.ndarray, np.ndarray]  # name, weight pages [n, P], Fisher pages [n, P]


def as_pages(flat: np.ndarray, page_size: int) -> np.ndarray:
    """A flat vector cut into float64 pages [ceil(n / P), P] by the pipeline's own formation."""
    pages = to_pages(torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32)), page_size)
    return pages.numpy().astype(np.float64)


def paged(name: str, weights: np.ndarray, fisher: np.ndarray, page_size: int) -> Pages:
    return name, as_pages(weights, page_size), as_pages(fisher, page_size)


def nwv_dnns(page_size: int) -> list[Pages]:
    return [paged(name, *load_nwv_dnn(name), page_size) for name in NWV_ORDER]


def synthetic_dnns(page_size: int, seed: int) -> list[Pages]:
    rng = np.random.default_rng(seed)
    return [paged(f"syn{i}", rng.normal(0, 0.1, n), rng.lognormal(-6, 2, n), page_size)
            for i, n in enumerate(WS_WEIGHT_COUNTS)]


def first_state(dnns: list[Pages]) -> SharedState:
    """The store after the first DNN, mapped identically (docs/algorithms.md §3.4)."""
    _, w, F = dnns[0]
    state = empty_state(max(len(w_) for _, w_, _ in dnns), w.shape[1])
    return place(np.arange(len(w)), w, F, *state)


def time_matcher(method: str, w: np.ndarray, F: np.ndarray, state: SharedState, repeat: int) -> dict:
    return measure(lambda: MATCHERS[method](w, F, *state), repeat=repeat)


def step_by_step(dnns: list[Pages], repeat: int) -> list[dict]:
    """Per added DNN: every matcher on the same prior state; the state then advances with the greedy."""
    state, rows = first_state(dnns), []
    for name, w, F in dnns[1:]:
        results = {method: match(method, w, F, *state) for method in MATCHERS}
        times = {method: time_matcher(method, w, F, state, repeat) for method in MATCHERS}
        greedy_cost = results["greedy"].cost
        rows.append({
            "dnn": name,
            "pages": len(w),
            "cost": {m: r.cost for m, r in results.items()},
            "ratio_to_greedy": {m: r.cost / greedy_cost if greedy_cost else None for m, r in results.items()},
            "median_s": {m: t["median_s"] for m, t in times.items()},
            "p95_s": {m: t["p95_s"] for m, t in times.items()},
            "layout": {m: r.layout for m, r in results.items()},
        })
        state = place(results["greedy"].assignment, w, F, *state)
    return rows


def whole_packings(dnns: list[Pages]) -> dict[str, list[float]]:
    """Per matcher, the cost of each added DNN when that matcher advances its own state."""
    costs = {}
    for method in MATCHERS:
        state, costs[method] = first_state(dnns), []
        for _, w, F in dnns[1:]:
            result = match(method, w, F, *state)
            costs[method].append(result.cost)
            state = place(result.assignment, w, F, *state)
    return costs


def layout_text(layout: dict[int, int]) -> str:
    return " ".join(f"{level}:{count}" for level, count in layout.items())


def print_steps(title: str, rows: list[dict]) -> dict:
    """Print the per-DNN table and return the totals over the added DNNs."""
    print(f"\n{title}")
    methods = list(MATCHERS)
    header = (f"{'dnn':<8}{'pages':>6}" + "".join(f"{'cost ' + SHORT[m]:>15}" for m in methods)
              + f"{'opt-occ/gr':>11}{'opt/gr':>8}" + "".join(f"{'ms ' + SHORT[m]:>12}" for m in methods)
              + "  layout greedy = opt-occ | layout optimal (prior occupancy:pages)")
    print(header)
    for row in rows:
        ratio = row["ratio_to_greedy"]
        print(f"{row['dnn']:<8}{row['pages']:>6}" + "".join(f"{row['cost'][m]:>15.5g}" for m in methods)
              + f"{ratio['optimal-occupancy']:>11.3f}{ratio['optimal']:>8.3f}"
              + "".join(f"{1e3 * row['median_s'][m]:>12.1f}" for m in methods)
              + f"  {layout_text(row['layout']['greedy'])} | {layout_text(row['layout']['optimal'])}")
    totals = {
        "cost": {m: sum(r["cost"][m] for r in rows) for m in methods},
        "seconds": {m: sum(r["median_s"][m] for r in rows) for m in methods},
    }
    totals["ratio_to_greedy"] = {m: totals["cost"][m] / totals["cost"]["greedy"] for m in methods}
    print(f"{'total':<8}{sum(r['pages'] for r in rows):>6}" + "".join(f"{totals['cost'][m]:>15.5g}" for m in methods)
          + f"{totals['ratio_to_greedy']['optimal-occupancy']:>11.3f}{totals['ratio_to_greedy']['optimal']:>8.3f}"
          + "".join(f"{1e3 * totals['seconds'][m]:>12.1f}" for m in methods))
    return totals


def print_packings(costs: dict[str, list[float]]) -> dict:
    total = {m: sum(c) for m, c in costs.items()}
    ratio = {m: total[m] / total["greedy"] for m in costs}
    per_dnn = {m: [round(c / g, 3) for c, g in zip(costs[m], costs["greedy"], strict=True)] for m in costs}
    print("whole packings, each matcher advancing its own state: total cost / greedy's = "
          + ", ".join(f"{SHORT[m]} {ratio[m]:.3f}" for m in costs if m != "greedy")
          + "; per DNN: " + ", ".join(f"{SHORT[m]} {per_dnn[m]}" for m in costs if m != "greedy"))
    return {"cost": costs, "total_cost": total, "ratio_to_greedy": ratio}


def main(*, page_sizes: list[int], repeat: int, synthetic: bool, seed: int) -> dict:
    torch.set_num_threads(1)
    load = os.getloadavg()[0]  # other users' work on a small machine inflates wall times: record it
    print(f"1-minute load average at start: {load:.2f} on {os.cpu_count()} cores")
    payload = {"page_sizes": page_sizes, "repeat": repeat, "load_average_1m": load, "state": "shared pages hold "
               "their first occupant's weights, Fisher accumulates; step tables advance the state with the greedy",
               "nwv": {}, "synthetic": {}}
    have_fixtures = (fixtures_dir() / "nwv").is_dir()
    if not have_fixtures:
        print(f"NWV fixtures not found in {fixtures_dir() / 'nwv'} (set WEIGHTSEP_FIXTURES): skipping that case")
    for page_size in page_sizes:
        if have_fixtures:
            dnns = nwv_dnns(page_size)
            n_shared = max(len(w) for _, w, _ in dnns)
            rows = step_by_step(dnns, repeat)
            totals = print_steps(f"NWV fixtures, P={page_size}, S={n_shared}, first DNN {dnns[0][0]} identity; "
                                 "all matchers see the same prior state, advanced with the greedy", rows)
            packings = print_packings(whole_packings(dnns))
            payload["nwv"][str(page_size)] = {"n_shared": n_shared, "steps": rows, "totals": totals,
                                              "whole_packings": packings}
        if synthetic:
            dnns = synthetic_dnns(page_size, seed)
            n_shared = max(len(w) for _, w, _ in dnns)
            rows = step_by_step(dnns, repeat)
            totals = print_steps(f"synthetic 10 DNNs ({sum(WS_WEIGHT_COUNTS):,} weights), P={page_size}, "
                                 f"S={n_shared}, first identity, 9 matched, state advanced with the greedy", rows)
            per_dnn = {m: s / len(rows) for m, s in totals["seconds"].items()}
            print("10-DNN matching time (9 matched additions): "
                  + ", ".join(f"{SHORT[m]} {totals['seconds'][m]:.3f} s total, {1e3 * per_dnn[m]:.1f} ms per DNN"
                              for m in MATCHERS))
            payload["synthetic"][str(page_size)] = {"n_shared": n_shared, "seed": seed, "steps": rows,
                                                    "totals": totals, "seconds_per_dnn": per_dnn}
    path = write_result("matching", payload)
    print(f"\nwrote {path}")
    return payload


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.matching", description=__doc__.split("\n\n")[0])
    parser.add_argument("--page-sizes", type=int, nargs="+", default=[100, 512], help="weights per page")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per matcher and DNN (median reported)")
    parser.add_argument("--no-synthetic", dest="synthetic", action="store_false", help="skip the 10-DNN case")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic DNNs")
    args = parser.parse_args()
    main(page_sizes=args.page_sizes, repeat=args.repeat, synthetic=args.synthetic, seed=args.seed)


if __name__ == "__main__":
    cli()
