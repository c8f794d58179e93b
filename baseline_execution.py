"""The published execution benchmark, baseline side: the same random schedule as ws_execution.py with
the stand-alone DNNs, each DNN's weights loaded from storage (one safetensors file per DNN) at every
switch.

The stand-alone weights come from the trained-model cache (`weightsep.train.standalone_models`;
pass the `--train-steps` the store was built with so the cache entry matches), written once to a
temporary directory. Prints the total switching (= loading) time, the total inference time and
each DNN's stand-alone test accuracy.

    python baseline_execution.py --store state --switches 50 --seed 0 [--device cuda]
"""
from __future__ import annotations

from weightsep import exit_with, guarded, interruptible

with interruptible():  # Ctrl-C during the imports: `interrupted`, exit 130
    import tempfile
    import time
    from pathlib import Path

    import safetensors.torch
    import torch

    from weightsep.checks import int_at_least
    from ws_execution import check_args, common_args, open_packed, report, schedule, sync


def main(argv: list[str] | None = None) -> int:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--train-steps", type=int_at_least(1), default=None,
                   help="the stand-alone training steps the store was built with (default: each folder's TRAIN)")
    args = p.parse_args(argv)
    check_args(p, args)
    torch.set_num_threads(1)
    with interruptible():  # imported when needed (the argument checks come first); Ctrl-C: exit 130
        from weightsep.flat import evaluating, load_buffer_state
        from weightsep.store import BUFFER
        from weightsep.train import standalone_models

    if (opened := open_packed(args)) is None:
        return 2
    state, loaded, data, device = opened
    names = list(state.vnns)
    models = {n: item.model.to(device) for n, item in loaded.items()}
    with tempfile.TemporaryDirectory(prefix="weightsep-baseline-") as tmp:
        files = {}
        for name, item in loaded.items():
            trained = standalone_models([item.source], workers=1, steps=args.train_steps)[name]
            files[name] = Path(tmp) / f"{name}.safetensors"
            safetensors.torch.save_file({"theta": trained.theta.contiguous(),
                                         **{BUFFER + k: b.contiguous() for k, b in trained.buffers.items()}}, files[name])
        print(f"stand-alone DNNs: {len(names)}, {sum(f.stat().st_size for f in files.values()) / 1024:.1f} KiB "
              f"of safetensors files in {tmp}; loaded to {device} at every switch")

        switch_s = infer_s = 0.0
        correct: dict[str, int] = {}

        def run(name: str) -> tuple[float, float, int]:
            sync(device)
            start = time.perf_counter()
            tensors = safetensors.torch.load_file(files[name], device=str(device))
            theta = tensors.pop("theta")
            load_buffer_state(models[name], {k.removeprefix(BUFFER): b for k, b in tensors.items()}, name)
            sync(device)
            mid = time.perf_counter()
            x, y = data[name]
            with torch.no_grad(), evaluating(models[name]):
                c = sum(int((models[name](x[i : i + args.batch], theta).argmax(1) == y[i : i + args.batch]).sum())
                        for i in range(0, len(x), args.batch))
            sync(device)
            return mid - start, time.perf_counter() - mid, c

        for f in files.values():  # untimed warm-up, as ws_execution.py: one read of each file
            safetensors.torch.load_file(f, device=str(device))
        for name in schedule(names, args.switches, args.seed):
            s, i, c = run(name)
            switch_s, infer_s = switch_s + s, infer_s + i
            if correct.setdefault(name, c) != c:
                raise RuntimeError(f"{name}: {c} correct now, {correct[name]} before")
        for name in names:
            if name not in correct:
                correct[name] = run(name)[2]
    report("baseline (stand-alone, loaded from storage)", switch_s, infer_s, args.switches,
           {n: correct[n] / len(data[n][1]) for n in names}, "stand-alone")
    return 0


if __name__ == "__main__":
    exit_with(guarded(main))
