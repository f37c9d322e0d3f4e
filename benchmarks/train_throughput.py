"""Training throughput: the prrt engine against a bare MONAI-tutorial-style loop.

Both train the same network (the compact 3D CNN by default) on the same in-memory synthetic images
with the same batch size and the same kind of augmentation (random affine + intensity scaling);
each makes its own precision choice:

* ``engine``: :func:`prrt.learn.training.train_model` (batched augmentation with MONAI's AffineTransform
  layer; on a GPU bf16 autocast, channels_last_3d and cuDNN autotuning; its per-epoch inner
  validation is included in its time);
* ``baseline``: the loop of MONAI's 3D classification tutorials: ``monai.data.Dataset`` with
  per-sample ``RandAffined`` and ``RandScaleIntensityd``, a ``DataLoader`` (2 workers), float32,
  ``zero_grad → forward → loss → backward → step``.

Each variant runs in its own process so that its peak memory is its own (CPU: peak resident set
size of the process; GPU: ``torch.cuda.max_memory_allocated``). Prints samples per second, peak
memory and the ratio engine / baseline.

    python benchmarks/train_throughput.py                    # CPU, demo-profile input size
    python benchmarks/train_throughput.py --device cuda --size 64 64 56 --n 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def data(n: int, size, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, *size), dtype=np.float32)
    y = (rng.random(n) < 0.36).astype(np.float32)
    y[:2] = [0, 1]
    return torch.from_numpy(x), y


def run_engine(a) -> dict:
    from prrt.learn import training as train

    x, y = data(a.n, a.size)
    xv, yv = data(8, a.size, seed=1)
    cfg = train.TrainConfig(encoder=a.encoder, epochs=1, batch_size=a.batch_size, device=a.device)
    train.train_model(x, y, xv, yv, cfg, seed=0, progress=False)  # warm-up (and cuDNN autotuning)
    if a.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    cfg = train.TrainConfig(encoder=a.encoder, epochs=a.epochs, batch_size=a.batch_size, device=a.device)
    t0 = time.perf_counter()
    train.train_model(x, y, xv, yv, cfg, seed=0, progress=False)
    if a.device == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0}


def run_baseline(a) -> dict:
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, RandAffined, RandScaleIntensityd

    from prrt.learn.networks import ImageClassifier, build_encoder

    torch.manual_seed(0)
    x, y = data(a.n, a.size)
    items = [{"image": x[i], "label": torch.tensor(y[i])} for i in range(a.n)]
    tf = Compose([RandAffined(keys="image", prob=1.0, rotate_range=(0.1, 0.1, 0.1), scale_range=(0.05,) * 3,
                              translate_range=tuple(0.05 * s for s in a.size), padding_mode="border"),
                  RandScaleIntensityd(keys="image", factors=0.1, prob=1.0)])
    device = torch.device(a.device)
    loader = DataLoader(Dataset(items, tf), batch_size=a.batch_size, shuffle=True, num_workers=2,
                        pin_memory=device.type == "cuda")
    model = ImageClassifier(build_encoder(a.encoder)).to(device)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def epoch():
        model.train()
        for batch in loader:
            inputs, labels = batch["image"].to(device), batch["label"].to(device)
            opt.zero_grad()
            loss = loss_fn(model(inputs), labels)
            loss.backward()
            opt.step()

    epoch()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.epochs):
        epoch()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0}


def child(a) -> None:
    out = (run_engine if a.variant == "engine" else run_baseline)(a)
    out["samples_per_s"] = a.n * a.epochs / out["seconds"]
    if a.device == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["card"] = torch.cuda.get_device_name(0)
    else:
        out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["card"] = "CPU"
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=3, default=[32, 32, 28])
    ap.add_argument("--n", type=int, default=64, help="training images")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--encoder", default="compact")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variant", choices=["engine", "baseline"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        child(a)
        return
    res = {}
    for variant in ("baseline", "engine"):
        cmd = [sys.executable, __file__, "--variant", variant, "--size", *map(str, a.size), "--n", str(a.n),
               "--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--encoder", a.encoder,
               "--device", a.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    card = res["engine"]["card"]
    print(f"device: {card}; encoder {a.encoder}; input {'x'.join(map(str, a.size))}; batch {a.batch_size}; "
          f"{a.n} images x {a.epochs} epochs")
    print(f"{'variant':<10} {'samples/s':>10} {'peak memory (MiB)':>18}")
    for v in ("baseline", "engine"):
        print(f"{v:<10} {res[v]['samples_per_s']:>10.1f} {res[v]['peak_mib']:>18.0f}")
    print(f"ratio engine / baseline (samples/s): {res['engine']['samples_per_s'] / res['baseline']['samples_per_s']:.2f}")


if __name__ == "__main__":
    main()
