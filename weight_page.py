"""Form a DNN's weight pages and show their Fisher mass and contribution density.

    python weight_page.py mnist10k                       # text, and results/weight_page_mnist10k.png
    python weight_page.py letters --page-size 100 --fisher paper --no-plot

Uses the DNN's cached stand-alone weights (training them first if needed), then the Fisher and
separation stages, without touching any store: which pages would stay exclusive at this margin?
"""
from weightsep import exit_with, guarded, interruptible

with interruptible():  # Ctrl-C during the imports: `interrupted`, exit 130
    from pathlib import Path

    import torch

    from weightsep.checks import Parser, writable_dir
    from weightsep.fisher import ESTIMATORS, FisherConfig
    from weightsep.flat import load_buffer_state, page_labels, parameter_sizes
    from weightsep.pack import PUBLISHED_SHARED_PAGES, PackConfig
    from weightsep.packing import fisher_for
    from weightsep.pages import to_pages
    from weightsep.records import load
    from weightsep.separation import separate
    from weightsep.train import set_single_thread, standalone_models

RESULTS = Path(__file__).resolve().parent / "results"


def plot(name: str, mass: torch.Tensor, cd: torch.Tensor, n_exclusive: int, margin: float, path: Path) -> None:
    with interruptible():  # Ctrl-C in matplotlib's imports: exit 130 (nothing is written before them)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

    order = torch.argsort(cd, descending=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    left.bar(range(len(mass)), mass.tolist(), width=1.0, color="tab:blue")
    left.bar(order[:n_exclusive].tolist(), mass[order[:n_exclusive]].tolist(), width=1.0, color="tab:red",
             label="would be exclusive")
    left.set(xlabel="logical page", ylabel="Fisher mass (sum over the page)", yscale="log", title=f"{name}: Fisher per page")
    left.legend()
    right.plot(range(1, len(cd) + 1), torch.cumsum(cd[order], 0).tolist(), color="tab:blue")
    right.axhline(1 - margin, color="tab:red", linestyle="--", label=f"1 - margin = {1 - margin:g}")
    right.axvline(n_exclusive, color="gray", linestyle=":", label=f"{n_exclusive} exclusive pages")
    right.set(xlabel="pages, highest contribution density first", ylabel="cumulative contribution density",
              title="separation")
    right.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = Parser(prog="weight_page.py", description=__doc__.split("\n\n")[0])
    p.add_argument("dnn", help="DNN name or folder")
    p.add_argument("--page-size", type=int, default=512)
    p.add_argument("--shared-pages", type=int, default=PUBLISHED_SHARED_PAGES, help="S (default the published 128)")
    p.add_argument("--margin", type=float, default=0.1)
    p.add_argument("--fisher", choices=list(ESTIMATORS), default=FisherConfig().estimator)
    p.add_argument("--fisher-samples", type=int)
    p.add_argument("--dnn-folder", type=Path, action="append", default=[])
    p.add_argument("--plot", type=Path, help="PNG path (default results/weight_page_NAME.png)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    # the stage configs' own rules (the messages name these flags), before any training or Fisher
    config = PackConfig(page_size=args.page_size, n_shared=args.shared_pages, margin=args.margin)
    fisher_config = FisherConfig(args.fisher, args.fisher_samples)
    if not args.no_plot:
        if args.plot is not None and args.plot.is_dir():
            p.error(f"--plot {args.plot} is a directory; name a .png file")
        writable_dir(args.plot.parent if args.plot else RESULTS, "--plot")
    set_single_thread()
    loaded = load([args.dnn], args.dnn_folder)
    name, item = next(iter(loaded.items()))
    trained = standalone_models([item.source])[name]
    theta = trained.theta
    load_buffer_state(item.model, trained.buffers, f"DNN {name!r}, stand-alone")
    fisher = fisher_for(item, theta, fisher_config)
    pages = to_pages(fisher.double(), config.page_size)
    mass = pages.sum(1)
    sep = separate(fisher, config.page_size, config.n_shared, config.margin)
    cd = sep.contribution_density
    print(f"{name}: {theta.numel():,} weights -> {len(mass)} pages of {config.page_size}; Fisher {args.fisher}")
    top_tenth = cd.sort(descending=True).values[: max(1, len(cd) // 10)].sum()
    print(f"margin {config.margin}: {len(sep.exclusive)} exclusive pages ({sep.n_overflow} of them overflow), "
          f"{len(sep.sharable)} sharable; the top 10% of pages hold {top_tenth:.1%} of the Fisher")
    labels = page_labels(parameter_sizes(item.model), config.page_size)
    print(f"{'page':>5} {'Fisher mass':>12} {'cd':>8} {'cumulative':>10}  parameters")
    cumulative = 0.0
    for page in torch.argsort(cd, descending=True)[:15].tolist():
        cumulative += float(cd[page])
        print(f"{page:>5} {float(mass[page]):>12.4g} {float(cd[page]):>8.4f} {cumulative:>10.4f}  {labels[page]}")
    if not args.no_plot:
        path = args.plot or RESULTS / f"weight_page_{name}.png"
        plot(name, mass, cd, len(sep.exclusive), config.margin, path)
        print(f"picture: {path}")
    return 0


if __name__ == "__main__":
    exit_with(guarded(main))
