"""Show a registered VNN: its page table, shared and exclusive pages, and the occupancy it sees.

    python vnn.py mnist10k                    # text, and results/vnn_mnist10k.png
    python vnn.py mnist10k --store /tmp/state --no-plot

Reads the store only (no data, no training).
"""
from weightsep import exit_with, guarded, interruptible

with interruptible():  # Ctrl-C during the imports: `interrupted`, exit 130
    from pathlib import Path

    import torch

    from weightsep.checks import Parser, writable_dir
    from weightsep.flat import page_labels
    from weightsep.quant import CODE, FORMATS
    from weightsep.state import exclusive_slots, is_shared
    from weightsep.store import Store, file_slug

RESULTS = Path(__file__).resolve().parent / "results"


def default_plot(name: str) -> Path:
    """results/vnn_NAME.png with NAME reduced to a file name's safe characters: the name comes from
    the store, which may be hostile (`x/../../pwned` must not write outside results/)."""
    return RESULTS / f"vnn_{file_slug(name)}.png"


def describe(state, name: str) -> str:
    vnn = state.vnns[name]
    S, occupancy = state.n_shared, state.occupancy()
    table = vnn.page_table
    shared = table[is_shared(table, S)]
    lines = [f"{name}: {vnn.n_weights:,} weights in {len(table)} pages of {state.page_size} "
             f"({len(shared)} on shared pages, {vnn.exclusive_pages.shape[0]} exclusive)",
             "page table (logical page -> shared page index, or E<slot> for an exclusive page):"]
    slots = exclusive_slots(table, S)
    cells = [f"{i}:{int(t)}" if s else f"{i}:E{int(e)}" for i, (t, s, e) in enumerate(zip(table, is_shared(table, S), slots))]
    lines += ["  " + " ".join(cells[i:i + 12]) for i in range(0, len(cells), 12)]
    levels = occupancy[shared].bincount()
    lines.append("occupancy of its shared pages: " + ", ".join(
        f"{int(n)} pages shared by {k} DNN{'s' if k > 1 else ''}" for k, n in enumerate(levels) if n))
    if vnn.provenance.parameters:  # recorded at packing (stores from before have none)
        lines.append("parameters by logical page (E: exclusive):")
        labels = page_labels(vnn.provenance.parameters, state.page_size)
        runs = []  # consecutive pages covering the same parameters
        for i, label in enumerate(labels):
            if runs and runs[-1][2] == label:
                runs[-1][1] = i
            else:
                runs.append([i, i, label])
        for a, b, label in runs:
            kinds = "".join("E" if not is_shared(table[i : i + 1], S) else "s" for i in range(a, b + 1))
            lines.append(f"  {a if a == b else f'{a}-{b}':>9}  {label}  [{kinds}]")
    codes = state.format.logical_codes(name, table)
    if (codes != CODE["float32"]).any():  # a quantised store: the format each logical page is held in
        counts = torch.bincount(codes.long(), minlength=len(FORMATS)).tolist()
        lines.append("page formats: " + ", ".join(f"{n} {f}" for f, n in zip(FORMATS, counts) if n)
                     + " (by logical page: " + "".join(str(int(c)) for c in codes) + f"; codes {dict(enumerate(FORMATS))})")
    info = vnn.provenance.pack or {}
    if info:
        lines.append(f"packing: matching {info.get('matching')}, cost {info.get('matching_cost', 0):.4g}, "
                     f"tpr {info.get('tpr', 1.0):.3f}, overflow pages {info.get('n_overflow', 0)}")
    return "\n".join(lines)


def plot(state, name: str, path: Path) -> None:
    with interruptible():  # Ctrl-C in matplotlib's imports: exit 130 (nothing is written before them)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

    vnn, S, occupancy = state.vnns[name], state.n_shared, state.occupancy()
    table = vnn.page_table
    on_shared = is_shared(table, S)
    heights = [int(occupancy[t]) if s else 0 for t, s in zip(table, on_shared)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5.5), gridspec_kw={"height_ratios": [3, 1]})
    top.bar(range(len(table)), heights, color=["tab:blue" if s else "tab:red" for s in on_shared], width=1.0)
    top.bar(range(len(table)), [0 if s else 0.5 for s in on_shared], color="tab:red", width=1.0, label="exclusive (level 2)")
    top.set(xlabel="logical page", ylabel="DNNs on its shared page",
            title=f"{name}: {int(on_shared.sum())} shared (blue, height = occupancy) and "
                  f"{int((~on_shared).sum())} exclusive pages (red)")
    top.legend(loc="upper right")
    mine = set(table[on_shared].tolist())
    bottom.bar(range(S), occupancy.tolist(), width=1.0, color=["tab:blue" if i in mine else "lightgray" for i in range(S)])
    bottom.set(xlabel="shared page (level 1)", ylabel="occupancy", title=f"all {S} shared pages (blue: used by {name})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = Parser(prog="vnn.py", description=__doc__.split("\n\n")[0])
    p.add_argument("vnn_name")
    p.add_argument("--store", type=Path, default=Path("state"))
    p.add_argument("--plot", type=Path, help="PNG path (default results/vnn_NAME.png)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    path = None if args.no_plot else args.plot or default_plot(args.vnn_name)
    if path is not None:  # refused before the store is read, not after
        if path.is_dir():
            p.error(f"--plot {path} is a directory; name a .png file")
        writable_dir(path.parent, "--plot")
    state = Store(args.store).load()
    if args.vnn_name not in state.vnns:
        raise ValueError(f"{args.vnn_name!r} is not packed in {args.store}; packed: {', '.join(state.vnns) or 'none'}")
    print(describe(state, args.vnn_name))
    if path is not None:
        plot(state, args.vnn_name, path)
        print(f"picture: {path}")
    return 0


if __name__ == "__main__":
    exit_with(guarded(main))
