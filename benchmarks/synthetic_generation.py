"""Time to generate the default synthetic cohort (116 patients, standard geometry).

    python benchmarks/synthetic_generation.py [--workers N] [--seed S]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from prrt.data.synthetic import DEFAULT_SEED, generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        report = generate(d, seed=a.seed, workers=a.workers, progress=False)
        dt = time.perf_counter() - t0
    print(f"{report['n_patients']} patients in {dt:.1f} s ({dt / report['n_patients'] * 1000:.0f} ms/patient)")


if __name__ == "__main__":
    main()
