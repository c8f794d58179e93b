"""Microbenchmarks; every one reports ratios measured side by side in one run (bench/timing.py)."""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads BLAS: threads fight on small shared machines
