"""`python -m weightsep`: the pipeline's operations as commands, thin over the stage modules.

    python -m weightsep run                       # main job on the offline default (suite/)
    python -m weightsep add mnist10k              # = WeightSeparation.py -mode=a -network_path=...
    python -m weightsep train mnist10k --iter 320 # = -mode=t (one round-robin turn)
    python -m weightsep eval mnist10k             # = -mode=e
    python -m weightsep joint --steps 1500        # true joint optimisation of the packed store
    python -m weightsep report                    # the paper-style table of the store
    python -m weightsep quantize --precision int8 # hold the store's pages in int8 (then `joint`)
    python -m weightsep list | remove NAME | restore | prepare

Config flags and their help are derived from the stage configs (PackConfig, FisherConfig, OptimizeConfig,
PrecisionConfig): a new scalar field is a new flag; one whose values come from a table also needs
its entry in CHOICES below, and a field that is not a scalar (or that no flag sets) one in SKIP.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import types
import typing
from pathlib import Path

from . import bound, distributed
from . import dnn as dnn_mod
from . import store as store_mod
from .bound import DEFAULT_MAX_LOSS_PP
from .checks import Parser, flag, int_at_least, writable_dir
from .config_help import flag_help
from .errors import USER_ERRORS
from .evaluate import format_aggregate, format_table, make_row, packed_theta, summarize
from .export import export_c
from .fisher import ESTIMATORS, FisherConfig
from .group import Group
from .joint import BALANCES, SCHEDULES
from .matching import MATCHERS
from .optimize import OPTIMIZERS, OptimizeConfig, optimize, unused_fields
from .pack import MODES, PUBLISHED_SHARED_PAGES, SHARED_CONTENT, PackConfig, pack_config, plans_a_set, remove_vnn
from .packing import pack_records
from .page_optimizer import SELECTIONS
from .pipeline import RESULTS_DIR, RunConfig, hold, run, write_summary
from .precision import POLICIES, PrecisionConfig, assign, format_counts, packed_bytes
from .quant import FORMATS
from .records import Reference, load, load_packed
from .separation import SEPARATIONS
from .store import PREVIOUS, Store, StoreError
from .train import set_single_thread, standalone_models

CHOICES = {"mode": MODES, "matching": tuple(MATCHERS), "shared_content": SHARED_CONTENT,
           "estimator": tuple(ESTIMATORS), "optimizer": tuple(OPTIMIZERS), "separation": SEPARATIONS,
           "select": tuple(SELECTIONS), "schedule": tuple(SCHEDULES), "balance": BALANCES,
           "precision": POLICIES, "shared_dtype": FORMATS, "exclusive_dtype": FORMATS}
SKIP = {"seed", "version", "dnns"}


def _scalar_type(hint) -> type:
    """`int` for `int`, `int | None` or `Optional[int]`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(
        hint, types.UnionType) or typing.get_origin(hint) is typing.Union else [hint]
    return args[0]


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --flag per field of a stage config; default None means: the config's own default."""
    group = parser.add_argument_group(cls.__name__)
    hints = typing.get_type_hints(cls)  # the annotations resolved (they are strings under `from __future__`)
    for f in dataclasses.fields(cls):
        if f.name in SKIP:
            continue
        kind = _scalar_type(hints[f.name])
        name = flag(f.name)
        if kind is bool:
            group.add_argument(name, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=flag_help(f))
        else:
            group.add_argument(name, dest=f.name, type=kind, default=None, choices=CHOICES.get(f.name),
                               help=flag_help(f))


def build_config(cls: type, args: argparse.Namespace, **fixed):
    """A stage config from the flags given (others keep their defaults), plus fixed fields."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if getattr(args, f.name, None) is not None and f.name not in SKIP}
    if "seed" in {f.name for f in dataclasses.fields(cls)}:
        given["seed"] = args.seed
    return cls(**{**given, **fixed})


def stored_pack_config(state, args: argparse.Namespace) -> PackConfig:
    """The store's own pack config with its S (the state's: a config may leave S to the DNNs); a flag
    that contradicts its layout is an error."""
    stored = pack_config(state)
    layout = {"mode": stored.mode, "page_size": stored.page_size, "n_shared": state.n_shared}
    for name, value in layout.items():
        given = getattr(args, name, None)
        if given is not None and given != value:
            raise ValueError(f"the store was made with {name}={value}, not {given}; "
                             "use another --store for a different layout")
    return build_config(PackConfig, args, **layout, separation="margin")


# ---- operations -------------------------------------------------------------------------------

def _folder_dnns(folders: list[Path]) -> list[str]:
    """The DNNs in --dnn-folder folders (each a DNN folder or a folder of them), by name."""
    roots = [Path(f).resolve() for f in folders]
    return [name for name, path in dnn_mod.folders(folders).items()
            if path.resolve() in roots or path.resolve().parent in roots]


def cmd_prepare(args) -> None:
    names = args.dnns or (_folder_dnns(args.dnn_folder) if args.dnn_folder else dnn_mod.suite())
    for name in names:
        dnn = dnn_mod.get(name, args.dnn_folder)
        if not hasattr(dnn.module, "prepare"):
            print(f"{name}: no prepare() in its dnn.py; its data is supplied by hand")
            continue
        print(f"preparing {name} ...", end=" ", flush=True)
        dnn_mod.data_dir().mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        dnn.call("prepare", dnn_mod.data_dir())
        print(f"{time.perf_counter() - start:.1f} s", flush=True)
    print(f"data ready in {dnn_mod.data_dir()}")


def max_loss_arg(text: str) -> tuple[str | None, float]:
    """`PP` or `NAME=PP` of --max-loss: (None or NAME, PP)."""
    name, _, value = text.rpartition("=")
    try:
        return name or None, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a loss bound is PP or NAME=PP, PP a number of percentage points") from None


def cmd_run(args) -> None:
    bounds = args.max_loss or []
    config = RunConfig(
        dnns=args.dnns or dnn_mod.suite(), extra_folders=args.dnn_folder, store=args.store, results=args.results,
        workers=args.workers, pack=build_config(PackConfig, args), fisher=build_config(FisherConfig, args),
        optimize=build_config(OptimizeConfig, args), precision=build_config(PrecisionConfig, args),
        control=args.control, train_steps=args.train_steps,
        seeds=args.seeds or [args.seed], procs=args.procs, backend=args.backend,
        max_loss=next((pp for name, pp in bounds if name is None), None),
        max_loss_by_dnn={name: pp for name, pp in bounds if name is not None})
    summary = run(config)
    if summary is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    for one in summary["seeds"]:
        if len(config.seeds) > 1:
            print(f"\n== seed {one['seed']} (store {one['store']})")
        print(format_table(one))
        note = bound.notes(one)
        if note:
            print(note)
        t = one["timings"]
        ranks = (f" ({config.procs} ranks, all-reduce {t['communication_seconds']:.1f} s; per rank "
                 + ", ".join(f"{m:.0f}" for m in t["peak_memory_mb_per_rank"]) + " MB)") if "peak_memory_mb_per_rank" in t else ""
        print(f"time:        stand-alone {t['standalone_seconds']:.0f} s, Fisher {t['fisher_seconds']:.1f} s, "
              f"matching {t['matching_seconds']:.2f} s, optimisation {t['optimize_seconds']:.0f} s; "
              f"peak memory {t['peak_memory_mb']:.0f} MB" + ranks)
    if len(config.seeds) > 1:
        print("\n== over seeds\n" + format_aggregate(summary["aggregate"]))
    print(f"\nwrote {args.results / 'summary.json'}, {args.results / 'summary.md'} and the store "
          + ", ".join(one["store"] for one in summary["seeds"]))


def cmd_add(args) -> None:
    store = Store(args.store)
    with store.writing(f"add {args.network_path}"):
        _add(args, store)


def _add(args, store: Store) -> None:
    state = store.load() if store.exists() else None
    # -mode=a adds one DNN at a time, so the published per-DNN margin decides its exclusive pages, and
    # the DNNs to come are unknown: a new store has the published S unless --shared-pages says otherwise
    published = PUBLISHED_SHARED_PAGES if args.n_shared is None else args.n_shared
    config = (build_config(PackConfig, args, separation="margin", n_shared=published) if state is None
              else stored_pack_config(state, args))
    if state is not None and args.network_path in state.vnns:
        raise ValueError(f"DNN {args.network_path!r} is already packed in {args.store}; remove it first")
    records = load([args.network_path], args.dnn_folder)
    trained = standalone_models([record.source for record in records.values()], args.workers, args.train_steps)
    for name, record in records.items():
        record.reference = Reference.of(trained[name])
    state, timings = pack_records(records, config, build_config(FisherConfig, args), state)
    store.save(state)
    name = next(iter(records))
    info = state.vnns[name].provenance.pack_info
    print(f"added {name}: {info.n_exclusive} exclusive + {info.n_sharable} shared pages "
          f"(matching {info.matching}, cost {info.matching_cost:.4g}, {info.matching_seconds * 1e3:.1f} ms; "
          f"Fisher {timings['fisher_seconds']:.1f} s)")


def procs_arg(text: str) -> int | None:
    """--procs: a count of ranks, or "auto" (None: `distributed.auto_procs` decides)."""
    return None if text == "auto" else int_at_least(1)(text)


def _optimize_store(args, names, **fixed):
    """Optimise the store's pages (`names`: the DNNs to load, or a function of the state giving
    them); returns the optimiser's history (None on a rank other than 0 under torchrun)."""
    procs = getattr(args, "procs", 1)
    if procs is None:
        procs = _auto_procs(args, fixed)
    elif procs > 1:  # before any rank starts: the manifest alone, not the pages
        distributed.check_procs(procs, len(Store(args.store).read_manifest()["vnns"]))
    report = distributed.launch(procs, _optimize_store_here, args, names, fixed,
                                backend=getattr(args, "backend", "auto"))
    if report is None:  # a rank other than 0 under torchrun
        return None
    optimizer, best, history = report
    print(f"{optimizer}: best validation " + ", ".join(f"{n} {100 * a:.2f}%" for n, a in best.items())
          + f" ({history.seconds:.1f} s; non-finite steps dropped: {history.skipped or 'none'})")
    return history


def _auto_procs(args, fixed: dict) -> int:
    """`--procs auto` on a store, from its manifest alone; one process where the manifest cannot be
    read (the command then says what is wrong with the store, before any work, as on one process)."""
    try:
        dnns = len(Store(args.store).read_manifest()["vnns"])
    except StoreError:
        return 1
    config = build_config(OptimizeConfig, args, **fixed)
    return distributed.auto_procs(dnns, config.steps, config.spec.multi_rank)


def _optimize_store_here(args, names: list[str] | None, fixed: dict):
    """This process's part: the writer reads the store and sends it to the others, each trains its DNNs,
    the writer writes the result. Returns (optimizer, best validation accuracies, history) on the writer."""
    group, store = Group.current(), Store(args.store)
    with group.writing([store], args.command):
        state = group.from_writer(store.load)
        names = names(state) if callable(names) else names
        records = load_packed(state, names, args.dnn_folder, args.allow_changed_code, data=group.all_local)
        config = build_config(OptimizeConfig, args, **{"dnns": tuple(records), **fixed})
        mine = hold(records, config, group)
        tasks = {n: records[n].task(batches=records[n].batches) for n in mine}
        state, history = optimize(group.part_of(state, mine), tasks, config, group=group)
        if not history.rejected:  # a turn undone: the state is the one loaded
            group.save(store, state)
    return group.writes(lambda: (config.optimizer, history.val_accuracy[history.best_index], history))


def cmd_train(args) -> None:
    """One round-robin turn of the DNN; the DNNs it shares pages with are watched (OptimizeConfig.max_harm)."""
    name = args.vnn_name
    bound = OptimizeConfig.max_harm if args.max_harm is None else args.max_harm
    watch = bound < 100  # at 100 pp no turn can be undone: nothing to watch
    history = _optimize_store(args, lambda state: [name, *(state.sharing(name) if watch and name in state.vnns else [])],
                              optimizer="round-robin", rounds=1, steps_per_turn=args.iter, dnns=(name,))
    if history is not None and history.rejected:  # one turn: at most one undone
        trained, harmed = history.rejected[0]
        raise ValueError(f"the turn on {trained} was undone: it lowered " + ", ".join(
            f"{n}'s validation accuracy from {100 * a:.2f}% to {100 * b:.2f}% ({100 * (b - a):+.2f} pp)"
            for n, (a, b) in harmed.items()) + f", more than --max-harm {bound:g} pp; nothing was written: the store "
            "keeps its last good state (a lower --lr or fewer --iter harm less; --max-harm 100 keeps any turn)")


def cmd_joint(args) -> None:
    _optimize_store(args, None, optimizer="joint")


def cmd_eval(args) -> None:
    state = Store(args.store).load()
    item = load_packed(state, [args.vnn_name], args.dnn_folder, args.allow_changed_code)[args.vnn_name]
    standalone = state.vnns[args.vnn_name].provenance.standalone
    packed = item.test_accuracy(packed_theta(state, args.vnn_name, item.model))
    alone = standalone.test_accuracy if standalone else None
    print(f"{args.vnn_name}: packed test accuracy {100 * packed:.2f}%"
          + (f", stand-alone {100 * alone:.2f}% ({100 * (packed - alone):+.2f} pp)" if alone is not None else ""))


def cmd_report(args) -> None:
    state = Store(args.store).load()
    loaded = load_packed(state, extra=args.dnn_folder, allow_changed_code=args.allow_changed_code)
    missing = [n for n in loaded if state.vnns[n].provenance.standalone is None]
    if missing:
        raise ValueError(f"no stand-alone accuracy recorded for {', '.join(missing)}: not packed by `add` or `run`")
    rows = [make_row(state, n, state.vnns[n].provenance.standalone.test_accuracy,
                     item.test_accuracy(packed_theta(state, n, item.model)), published=item.source.facts.published_accuracy)
            for n, item in loaded.items()]
    summary = summarize(state, rows).to_json()
    write_summary(summary, args.results)
    print(format_table(summary))


def cmd_list(args) -> None:
    state = Store(args.store).load()
    if args.names:
        print("\n".join(state.vnns))
        return
    occupancy = state.occupancy()
    top = int(occupancy.max()) if len(occupancy) else 0
    print(f"store {args.store}: mode {pack_config(state).mode}, page size {state.page_size}, "
          f"{state.n_shared} shared pages ({int((occupancy > 0).sum())} in use, max occupancy {top})")
    for name, vnn in state.vnns.items():
        excl = vnn.exclusive_pages.shape[0]
        print(f"  {name}: {vnn.n_weights:,} weights, {len(vnn.page_table)} pages ({len(vnn.page_table) - excl} shared, "
              f"{excl} exclusive)")


def cmd_remove(args) -> None:
    store, name = Store(args.store), args.vnn_name
    with store.writing(f"remove {name}"):
        try:
            state, damage = remove_vnn(store.load(), name), None
        except StoreError as e:  # salvage: if only this DNN's file is damaged, the others load without it
            state, damage = store.load(without=name), e
        manifest = store.save(state)
    print(f"removed {name}; its exclusive pages are gone and its shared pages freed (generation {manifest['generation']})")
    if damage is not None:
        print(f"note: {name}'s own data was damaged, so the others were kept without reading it ({str(damage)[:300]}); "
              "the shared pages' Fisher was summed afresh from the DNNs kept")


def cmd_quantize(args) -> None:
    store = Store(args.store)
    config = build_config(PrecisionConfig, args)
    if config.is_float32:
        raise ValueError("--precision float32 leaves the store as it is; name a format or fisher")
    with store.writing("quantize"):
        state = assign(store.load(), config)
        store.save(state)
    counts = ", ".join(f"{n} {f}" for f, n in format_counts(state).items())
    print(f"quantised {args.store}: pages {counts}, {sum(packed_bytes(state).values()) / 1024:,.1f} KiB with "
          "page tables; `joint` now trains the pages for these formats")


def cmd_export(args) -> None:
    state = Store(args.store).load()
    loaded = load_packed(state, extra=args.dnn_folder, allow_changed_code=args.allow_changed_code, data=False)
    report = export_c(state, {n: item.model for n, item in loaded.items()}, args.out)
    flash, ram = report["flash_bytes"], report["ram_bytes"]
    kib = lambda n: f"{n / 1024:,.1f} KiB"  # noqa: E731
    print(f"wrote {args.out}: {len(loaded)} DNNs, {report['format']} pages; flash for weights {kib(flash['weights_total'])} "
          f"(level 1 {kib(flash['level1_shared_pages'])}, level 2 {kib(flash['level2_exclusive_pages'])} + page tables "
          f"{kib(flash['level2_page_tables'])}) against {kib(report['alone_flash_bytes'])} exported alone; RAM "
          f"{kib(sum(ram.values()))} (page pointers {kib(ram['page_pointers'])}, scratch {kib(ram['scratch'])}); "
          f"build: cc -std=c99 -O2 ws_main.c ws_runtime.c ws_model.c -lm (docs/deploy.md)")


def cmd_restore(args) -> None:
    done = Store(args.store).restore_previous()

    def listed(names: list[str]) -> str:
        return ", ".join(names) or "no DNNs"

    print(f"{args.store}: generation {done.restored_from} ({listed(done.dnns)}) is current again, as generation "
          f"{done.generation}")
    if done.replaced is not None:
        back, gone = [n for n in done.dnns if n not in done.replaced_dnns], [n for n in done.replaced_dnns if n not in done.dnns]
        print(f"it replaced generation {done.replaced} ({listed(done.replaced_dnns)})"
              + (f"; back: {', '.join(back)}" if back else "") + (f"; gone: {', '.join(gone)}" if gone else ""))
    if done.kept_as is not None and done.kept_as.name == PREVIOUS:
        print(f"generation {done.replaced} is kept as the previous one: `restore` again to undo")
    elif done.kept_as is not None:
        print(f"the replaced generation's files were damaged; its manifest is kept as {done.kept_as}")


# ---- parser -----------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", type=Path, default=Path("state"), help="store directory (default ./state)")
    common.add_argument("--dnn-folder", type=Path, action="append", default=[],
                        help="an extra DNN folder, or a folder of them (repeatable)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--workers", type=int_at_least(1), default=2, help="processes for stand-alone training (default 2)")
    common.add_argument("--results", type=Path, default=RESULTS_DIR, help="where summary.json/.md go")
    common.add_argument("--allow-changed-code", action="store_true",
                        help="use a packed DNN whose dnn.py changed since it was packed (default: refuse)")
    common.add_argument("--train-steps", type=int_at_least(1), default=None,
                        help="stand-alone training steps per DNN (default: each folder's TRAIN budget)")
    ranks = argparse.ArgumentParser(add_help=False)
    group = ranks.add_argument_group("scale-out (docs/distributed.md)")
    group.add_argument("--procs", type=procs_arg, default=None, metavar="N|auto",
                       help="ranks for the joint optimisation on this machine, each with its own DNNs and one thread "
                            "(default auto: one per free core, at most one per DNN, for joint runs of at least "
                            f"{distributed.AUTO_MIN_STEPS} steps; under torchrun leave it out: torchrun starts the ranks)")
    group.add_argument("--backend", choices=distributed.BACKENDS, default="auto",
                       help="torch.distributed backend (default auto: gloo on CPU, NCCL when every rank has a GPU)")

    installed = Path(sys.argv[0]).name == "weightsep"  # the console command of `pip install .`
    p = Parser(prog="weightsep" if installed else "python -m weightsep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, fn, help, configs=(), parents=()):
        c = sub.add_parser(name, parents=[common, *parents], help=help, description=help)
        for cls in configs:
            add_config_flags(c, cls)
        c.set_defaults(fn=fn, configs=configs)
        return c

    c = command("run", cmd_run, "the main job: train or reuse stand-alone DNNs, pack, optimise, report",
                (PackConfig, FisherConfig, OptimizeConfig, PrecisionConfig), parents=[ranks])
    c.add_argument("--dnns", nargs="+", help="DNN names or folders (default: the offline suite)")
    c.add_argument("--control", action=argparse.BooleanOptionalAction, default=RunConfig.control,
                   help="the no-sharing control beside the packed DNNs: each DNN trained alone with the same budget "
                        "(--no-control skips it: faster, but no packed - control column)")
    c.add_argument("--seeds", type=int, nargs="+",
                   help="run the whole pipeline once per seed and report mean and spread (default: --seed)")
    c.add_argument("--max-loss", nargs="+", metavar="PP|NAME=PP", type=max_loss_arg,
                   help="experimental (docs/pipeline.md: on 2 to 10 DNNs every DNN ended within 1 pp on test in 8 of 12 "
                        "runs, the store within 10%% of the smallest a ratio grid finds in 8 of 12): pack to an accuracy "
                        "instead of a ratio: the smallest store whose every DNN stays within PP percentage points of its "
                        "no-sharing control on validation data, beyond one standard error of the control's validation "
                        f"accuracy; NAME=PP sets one DNN's bound (the others: PP, else {DEFAULT_MAX_LOSS_PP}). Sizes the "
                        "store itself: no --ratio")
    c = command("prepare", cmd_prepare, "build the offline default's data files (idempotent)")
    c.add_argument("dnns", nargs="*", help="DNN names or folders (default: the offline suite, or the DNNs in the "
                   "--dnn-folder folders when given)")
    c = command("add", cmd_add, "add a DNN: form pages, compute Fisher, separate, match (-mode=a)",
                (PackConfig, FisherConfig))
    c.add_argument("network_path", help="DNN name or folder")
    c = command("train", cmd_train, "train one DNN through its page table: one round-robin turn (-mode=t)",
                (OptimizeConfig,))
    c.add_argument("vnn_name")
    c.add_argument("--iter", type=int_at_least(1), default=2000, help="steps (default 2000, as the original)")
    command("joint", cmd_joint, "true joint optimisation of every packed DNN", (OptimizeConfig,), parents=[ranks])
    c = command("eval", cmd_eval, "packed test accuracy of a DNN next to stand-alone (-mode=e)")
    c.add_argument("vnn_name")
    command("report", cmd_report, "evaluate every packed DNN and print/write the paper-style table")
    c = command("list", cmd_list, "list packed DNNs and the store layout (-mode=l)")
    c.add_argument("--names", action="store_true", help="only the names, one a line (for scripts)")
    c = command("remove", cmd_remove, "remove a DNN, freeing its pages (-mode=r)")
    c.add_argument("vnn_name")
    command("quantize", cmd_quantize, "hold a float32 store's pages in other formats (then `joint` trains for them)",
            (PrecisionConfig,))
    command("restore", cmd_restore, "make the previous good state current again")
    c = command("export", cmd_export, "write the store as a C99 library for microcontrollers (docs/deploy.md)")
    c.add_argument("--format", choices=["c"], default="c", help="the library's language (default c)")
    c.add_argument("out", type=Path, help="the folder the library goes into")
    return p


# ---- checks before any work --------------------------------------------------------------------

WRITES_STORE = {"run", "add", "train", "joint", "remove", "quantize", "restore"}
WRITES_RESULTS = {"run", "report"}
# fields a command sets itself: giving their flag is an error, not silently overridden
FIXED = {"joint": {"optimizer": "joint always runs the joint optimiser; for round-robin use `train` per DNN or "
                                "`run --optimizer round-robin`"},
         "run": {"max_harm": "run trains every DNN; only `train` watches the DNNs it does not train"},
         "train": {"optimizer": "train is one round-robin turn (-mode=t); for the joint optimiser use `joint`",
                   "rounds": "train is one round-robin turn; run it again for another round, or use "
                             "`run --optimizer round-robin --rounds N`",
                   "steps_per_turn": "train's steps are set by --iter"}}


def _given(args: argparse.Namespace, cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None and f.name not in SKIP]


def check_args(args: argparse.Namespace) -> None:
    """Every check that can fail before the work starts: config values (the configs' own rules),
    flags the command would override or ignore, and the store and results directories."""
    for cls in args.configs:
        build_config(cls, args)  # raises ValueError naming the flag
    if OptimizeConfig in args.configs:
        given = _given(args, OptimizeConfig)
        for name, why in FIXED.get(args.command, {}).items():
            if name in given:
                raise ValueError(f"{flag(name)} cannot be given to {args.command}: {why}")
        optimizer = {"joint": "joint", "train": "round-robin"}.get(args.command) or args.optimizer or OptimizeConfig.optimizer
        unused = [name for name in given if name in unused_fields(optimizer)]
        if unused:
            raise ValueError(f"{', '.join(map(flag, unused))}: no effect on {args.command} with the {optimizer} "
                             "optimizer, which does not read it; leave it out")
        if args.command == "run" and args.max_loss and getattr(args, "ratio", None) is not None:
            raise ValueError("--ratio and --max-loss both size the store: give one (--max-loss finds the ratio)")
        if (args.command == "run" and "promote_pages" in given
                and plans_a_set(args.mode or PackConfig.mode, args.separation or PackConfig.separation)):
            raise ValueError("--promote-pages is set by the budget separation (the part of the --ratio budget not "
                             "given at packing); use --at-packing to change it, or --separation margin")
    if args.command == "run" and args.max_loss:
        names = [name for name, _ in args.max_loss]
        if names.count(None) > 1 or len(set(names)) != len(names):
            raise ValueError("--max-loss: give PP at most once and each NAME=PP at most once")
    if args.store.exists() and not args.store.is_dir():
        raise ValueError(f"--store {args.store} is a file, not a store directory")
    if args.command in WRITES_STORE:
        writable_dir(args.store, "--store")
    if args.command in WRITES_RESULTS:
        writable_dir(args.results, "--results")
    if args.command == "run":
        for seed in (args.seeds or [args.seed])[1:]:  # the other seeds' stores: store-seedN beside it
            writable_dir(args.store.with_name(f"{args.store.name}-seed{seed}"), "--store (another seed's)")


def _hint_after_add(args: argparse.Namespace) -> None:
    """A DNN added to a store that holds others sits on pages trained for them: say what comes next."""
    state, name = Store(args.store).load(), Path(args.network_path).name
    if name in state.vnns and len(state.vnns) > 1:
        print(f"hint: {name} shares pages with {len(state.vnns) - 1} DNN(s) already packed, so its packed accuracy can be "
              f"far below stand-alone until the pages are trained again: python -m weightsep train {name} "
              f"--store {args.store} (one turn), or python -m weightsep joint --store {args.store}")


def main(argv: list[str] | None = None) -> int:
    """The command line; a user error is one line `error: ...` on stderr and exit status 2 (130 on Ctrl-C)."""
    writes, first_commit = False, len(store_mod.COMMITS)
    try:
        args = parser().parse_args(argv)
        writes = args.command in WRITES_STORE
        set_single_thread()
        check_args(args)
        args.fn(args)
        if args.command == "add":
            _hint_after_add(args)
    except KeyboardInterrupt:
        print("\ninterrupted" + (_written(first_commit) if writes else ""), file=sys.stderr)
        return 130
    except USER_ERRORS as e:  # after a save, the message says so (it may claim nothing was written)
        saved = _written(first_commit) if len(store_mod.COMMITS) > first_commit else ""
        print(f"error: {e}{saved}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, a path that is a file, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}" + (_written(first_commit) if writes else ""), file=sys.stderr)
        return 2
    return 0


def _written(first_commit: int) -> str:
    """What a command that stopped early left in its stores: the generations it committed, or nothing."""
    latest = dict(store_mod.COMMITS[first_commit:])  # store -> its last generation committed by this command
    if not latest:
        return "; nothing was written: the store keeps its last good state"
    return "; but " + ", ".join(f"{root} holds the new generation {generation}" for root, generation in latest.items()) + (
        ", saved before the stop")


if __name__ == "__main__":
    sys.exit(main())
