"""A packed store on a microcontroller: the C export (weightsep/export.py) checked and measured.

For a store (default ./state, the main job's), in float32 as it is and in int8 (the same store
quantised, page by page, one scale a page: `quantize --precision int8` without the training that
follows, which changes no byte count), the export is built for the host and for QEMU's mps2-an386
(Cortex-M4F), and:

* every test sample of every DNN runs on the host (its test accuracy is reported: the int8 store has
  not been trained for int8); `--samples` per DNN run under QEMU; the argmax of both equals PyTorch's
  PackedModel on every sample, and the Cortex-M logits equal the host's;
* flash: level 1 (shared pages), level 2 (exclusive pages, page tables), code (the runtime and the
  DNN descriptors, .text + .rodata of their objects for the Cortex-M4F), against each DNN exported
  alone in the same format; RAM: page pointers and scratch;
* instructions per switch (resolving the page table), per inference and per copy of one DNN's
  weights, counted by QEMU (`-icount shift=0`: ws_count.c), a count, not a timing.

    python -m bench.mcu                       # ./state; results/mcu.json (a few minutes)
    python -m bench.mcu --store S --samples 300
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.timing import write_result
from weightsep import export
from weightsep.execution import PackedModel
from weightsep.precision import PrecisionConfig, assign
from weightsep.records import load_packed
from weightsep.store import Store

TARGET = "mps2-an386"
FLASH_TARGET_KIB = 256  # issue 31: the ten suite DNNs in int8, weights and code


def code_bytes(out: Path) -> int:
    """.text + .rodata of the runtime and the DNN descriptors, compiled for the Cortex-M4F (the pages'
    sections are counted as levels 1 and 2)."""
    cc, flags = export.TARGETS[TARGET]
    arch = [f for f in flags if f.startswith("-m")]
    subprocess.run([cc, *export.C_FLAGS, *arch, "-c", *export.LIBRARY], cwd=out, check=True, capture_output=True)
    sizes = subprocess.run(["arm-none-eabi-size", "-A", *(Path(f).with_suffix(".o").name for f in export.LIBRARY)],
                           cwd=out, check=True, capture_output=True, text=True).stdout
    return sum(int(line.split()[1]) for line in sizes.splitlines()
               if line.split() and line.split()[0].startswith((".text", ".rodata")))


def check(state, records, out: Path, samples: int) -> dict:
    """Export `state` into `out`, build it for the host and the Cortex-M, run it; the per-DNN figures."""
    report = export.export_c(state, {n: r.model for n, r in records.items()}, out)
    host, mcu = export.build(out, "host"), export.build(out, TARGET)
    counter = export.build(out, TARGET, driver="ws_count.c")
    pm = PackedModel(state, {n: r.model for n, r in records.items()})
    rows = {}
    for index, (name, record) in enumerate(tqdm(records.items(), desc=f"{report['format']} export", unit="DNN")):
        x = torch.from_numpy(np.asarray(record.data.test.x)).float()
        pm.switch(name)
        want = pm.predict(x).numpy().argmax(1)
        x.numpy().tofile(out / "in.bin")
        export.run_binary(host, [str(index), str(len(x)), "in.bin", "host.bin"])
        on_host = np.fromfile(out / "host.bin", dtype=np.float32).reshape(len(x), -1)
        n = min(samples, len(x))
        export.run_binary(mcu, [str(index), str(n), "in.bin", "mcu.bin"], TARGET)
        on_mcu = np.fromfile(out / "mcu.bin", dtype=np.float32).reshape(n, -1)
        _, switch, inference, copy = map(float, export.run_binary(counter, [str(index), "in.bin"], TARGET, icount=True).split())
        rows[name] = {"test_samples": len(x), "host_argmax_equal": int((on_host.argmax(1) == want).sum()),
                      "host_test_accuracy": float((on_host.argmax(1) == np.asarray(record.data.test.y)).mean()),
                      "mcu_samples": n, "mcu_argmax_equal": int((on_mcu.argmax(1) == want[:n]).sum()),
                      "mcu_logits_equal_host": bool(np.array_equal(on_mcu, on_host[:n])),
                      "switch_instructions": switch, "inference_instructions": inference, "copy_instructions": copy}
    report["flash_bytes"]["code"] = code_bytes(out)
    report["flash_bytes"]["total"] = report["flash_bytes"]["weights_total"] + report["flash_bytes"]["code"]
    return {"memory": report, "dnns": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mcu", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, default=Path("state"), help="a packed store of template DNNs (default ./state)")
    p.add_argument("--samples", type=int, default=300, help="test samples per DNN under QEMU (default 300)")
    args = p.parse_args(argv)
    state = Store(args.store).load()
    records = load_packed(state)
    out = {}
    with tempfile.TemporaryDirectory(prefix="weightsep-mcu-") as tmp:
        for fmt, s in (("float32", state), ("int8", assign(state, PrecisionConfig(precision="int8")))):
            out[fmt] = check(s, records, Path(tmp) / fmt, args.samples)
    int8 = out["int8"]["memory"]["flash_bytes"]
    summary = {"int8_flash_kib": int8["total"] / 1024, "flash_target_kib": FLASH_TARGET_KIB,
               "int8_alone_flash_kib": out["int8"]["memory"]["alone_flash_bytes"] / 1024,
               "every_argmax_equal": all(r["host_argmax_equal"] == r["test_samples"] and r["mcu_argmax_equal"] == r["mcu_samples"]
                                         for o in out.values() for r in o["dnns"].values()),
               "every_mcu_logit_equal_host": all(r["mcu_logits_equal_host"] for o in out.values() for r in o["dnns"].values()),
               "int8_minus_float32_test_pp": [100 * (out["int8"]["dnns"][n]["host_test_accuracy"]
                                                     - out["float32"]["dnns"][n]["host_test_accuracy"]) for n in records],
               "switch_within_copy": all(r["switch_instructions"] <= r["copy_instructions"]
                                         for o in out.values() for r in o["dnns"].values())}
    path = write_result("mcu", {"store": str(args.store), "dnns": list(records), **summary, "formats": out})
    for fmt, o in out.items():
        f, ram = o["memory"]["flash_bytes"], o["memory"]["ram_bytes"]
        print(f"{fmt}: flash {f['total'] / 1024:.1f} KiB (level 1 {f['level1_shared_pages'] / 1024:.1f}, level 2 "
              f"{(f['level2_exclusive_pages'] + f['level2_page_tables']) / 1024:.1f}, code {f['code'] / 1024:.1f}) against "
              f"{o['memory']['alone_flash_bytes'] / 1024:.1f} KiB alone; RAM {sum(ram.values()) / 1024:.1f} KiB")
        for name, r in o["dnns"].items():
            print(f"  {name:12s} test accuracy {100 * r['host_test_accuracy']:.2f}%; argmax = PyTorch: host "
                  f"{r['host_argmax_equal']}/{r['test_samples']}, Cortex-M "
                  f"{r['mcu_argmax_equal']}/{r['mcu_samples']} (logits = host: {r['mcu_logits_equal_host']}); instructions: "
                  f"switch {r['switch_instructions']:,.0f}, inference {r['inference_instructions']:,.0f}, "
                  f"copy {r['copy_instructions']:,.0f}")
    print(f"wrote {path}")
    return 0 if summary["every_argmax_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
