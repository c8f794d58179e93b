"""The original command line, `python WeightSeparation.py -mode=X ...`, over weightsep's operations.

    python WeightSeparation.py -mode=a -network_path=suite/mnist10k   # add: pages, Fisher, separate, match
    python WeightSeparation.py -mode=t -vnn_name=mnist10k -iter=320    # train through the page table
    python WeightSeparation.py -mode=e -vnn_name=mnist10k              # packed vs stand-alone accuracy
    python WeightSeparation.py -mode=l                                 # list
    python WeightSeparation.py -mode=r -vnn_name=mnist10k              # remove, freeing its pages

A thin adapter: each mode is translated into the matching `python -m weightsep` command (see
`python -m weightsep --help`), so both spellings run the same code. Flags the original had and that
mean something here (-iter, -margin, -alpha, -target_accuracy) are passed on; --store and the other
`python -m weightsep` flags may follow.
"""
import sys

from weightsep import exit_with, interruptible

with interruptible():  # Ctrl-C during the imports: `interrupted`, exit 130
    from weightsep.checks import Parser, int_at_least
    from weightsep.cli import main

MODES = {"a": "add", "t": "train", "e": "eval", "l": "list", "r": "remove"}


def translate(argv: list[str]) -> list[str]:
    p = Parser(prog="WeightSeparation.py", description=__doc__.split("\n\n")[0],
                                epilog="modes: " + ", ".join(f"{k} = {v}" for k, v in MODES.items()))
    p.add_argument("-mode", default="l", help="a, t, e, l or r (default l)")
    p.add_argument("-network_path", help="DNN folder or name to add (-mode=a)")
    p.add_argument("-vnn_name", help="packed DNN (-mode=t, e, r)")
    p.add_argument("-iter", type=int_at_least(1), default=2000, help="training steps for -mode=t (default 2000)")
    p.add_argument("-target_accuracy", type=float, help="target accuracy for separation (-mode=a)")
    p.add_argument("-alpha", type=float, default=0.5, help="alpha of the target performance rate (-mode=a)")
    p.add_argument("-margin", type=float, default=0.1, help="separation margin (-mode=a)")
    p.add_argument("-use_exclusive_page", type=int, default=1, choices=(1,),
                   help="only 1 is built; for everything shared use: python -m weightsep add --mode nwv")
    args, rest = p.parse_known_args(argv)
    if args.mode not in MODES:
        p.error(f"-mode={args.mode} is not built here; built: {', '.join(MODES)}")
    command = [MODES[args.mode]]
    if args.mode == "a":
        if not args.network_path:
            p.error("-mode=a needs -network_path")
        command += [args.network_path, "--margin", str(args.margin), "--alpha", str(args.alpha)]
        if args.target_accuracy is not None:
            command += ["--target-accuracy", str(args.target_accuracy)]
    elif args.mode in "ter":
        if not args.vnn_name:
            p.error(f"-mode={args.mode} needs -vnn_name")
        command.append(args.vnn_name)
        if args.mode == "t":
            command += ["--iter", str(args.iter)]
    return command + rest


if __name__ == "__main__":
    exit_with(main(translate(sys.argv[1:])))
