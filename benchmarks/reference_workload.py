"""A fixed reference workload, the yardstick of the cost figures (issue 29).

Absolute times on a shared machine say little; multiples of a fixed workload measured on the same machine at the
same time say more. The workload: 5 training steps (forward, backward, AdamW step) of the compact 3D CNN of
:mod:`prrt.learn.networks` on a batch of 8 random 2-channel inputs of 32 × 32 × 32 voxels (the demo profile's), on
the CPU with the machine's threads (torch's default), seeded. It is timed ``--runs`` times after one warm-up run;
the median is the reference time ``R``. :mod:`benchmarks.cost` reports ``make book`` and ``make test`` as
multiples of ``R``.

    python benchmarks/reference_workload.py            # prints JSON: seconds of each run, the median, threads
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def workload(steps: int = 5, seed: int = 0) -> float:
    """Seconds for ``steps`` training steps of the fixed network on a fixed batch."""
    import torch

    from prrt.learn.networks import ImageClassifier, build_encoder

    torch.manual_seed(seed)
    net = ImageClassifier(build_encoder("compact", in_channels=2))
    x, y = torch.randn(8, 2, 32, 32, 32), torch.tensor([0.0, 1.0] * 4)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    return time.perf_counter() - t0


def reference(runs: int = 5, steps: int = 5) -> dict:
    """The reference time: the median of ``runs`` timed runs after a warm-up."""
    import torch

    workload(steps)  # warm-up: allocator, kernels
    times = [workload(steps) for _ in range(runs)]
    return {"seconds": [round(t, 3) for t in times], "median_s": round(statistics.median(times), 3),
            "steps": steps, "torch_threads": torch.get_num_threads()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    print(json.dumps(reference(args.runs, args.steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
