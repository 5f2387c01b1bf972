"""Measure training step times on this machine's GPU, as rows of the predictor's benchmark table.

    python scripts/gpu_steptime.py --gpu-model h200 -o h200.csv [--pairs] [--precision fp32]

Writes ``gpu_model,model,colocated,step_time_s,gpu_mem_mib`` rows (the format `gpufleet
predictor` reads, docs/scheduler.md) for job types named as in Gavel's table
(``gavel_throughputs.json``), so they line up with its K80/P100/V100 measurements:

- ``ResNet-18 (batch size B)``: the CIFAR-10 ResNet-18 (3x3 stem, no max-pool, 10 classes) on
  32x32 images, B in 16..256;
- ``ResNet-50 (batch size B)``: torchvision's ImageNet ResNet-50 on 224x224 images, B in 16..128.

Each step is forward, cross-entropy, backward and SGD with momentum on random data already on
the GPU (no data loading), timed with CUDA events over ``--steps`` steps after ``--warmup``;
peak memory from PyTorch's allocator. ``--pairs`` also runs two jobs at once on the GPU (two
processes, time-sliced by the driver as on a shared GPU without MPS) and writes each one's step
time with the other in ``colocated``. ``--precision fp32`` (default) turns TF32 off, as the
2019-era FP32 runs in Gavel's table were; ``bf16`` measures autocast bfloat16 for comparison.

Needs PyTorch and torchvision with a CUDA GPU. One job per process, so memory and allocator
state do not leak from one measurement into the next.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

JOBS = [
    *(f"ResNet-18 (batch size {b})" for b in (16, 32, 64, 128, 256)),
    *(f"ResNet-50 (batch size {b})" for b in (16, 32, 64, 128)),
]
PAIRS = [
    ("ResNet-50 (batch size 64)", "ResNet-50 (batch size 64)"),
    ("ResNet-18 (batch size 128)", "ResNet-50 (batch size 64)"),
    ("ResNet-18 (batch size 128)", "ResNet-18 (batch size 128)"),
]


def run_one(job: str, precision: str, warmup: int, seconds: float, start_at: float) -> dict:
    """Measure ``job`` in this process; wait until ``start_at`` (pairs start together)."""
    import torch
    import torchvision

    torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    torch.backends.cudnn.allow_tf32 = precision != "fp32"
    torch.backends.cudnn.benchmark = True
    family, batch = job.split(" (batch size ")
    batch_size = int(batch.rstrip(")"))
    if family == "ResNet-18":
        model = torchvision.models.resnet18(num_classes=10)
        model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
        shape, classes = (3, 32, 32), 10
    else:
        model = torchvision.models.resnet50(num_classes=1000)
        shape, classes = (3, 224, 224), 1000
    model = model.cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, *shape, device="cuda")
    y = torch.randint(0, classes, (batch_size,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    time.sleep(max(0.0, start_at - time.time()))
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    steps, stop = 0, time.time() + seconds
    while True:
        step()
        steps += 1
        if steps % 4 == 0:
            torch.cuda.synchronize()
            if time.time() >= stop:
                break
    end.record()
    torch.cuda.synchronize()
    return {
        "job": job,
        "steps": steps,
        "step_time_s": begin.elapsed_time(end) / 1000.0 / steps,
        "gpu_mem_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


def child(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-model", help="the GPU model column, e.g. h200 (docs/gpu-sharing.md)")
    ap.add_argument("-o", "--output", type=Path, help="CSV to write (default: standard output)")
    ap.add_argument("--pairs", action="store_true", help="also measure two jobs sharing the GPU")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0, help="timed window per measurement")
    ap.add_argument("--child", nargs=2, metavar=("JOB", "START_AT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        job, start_at = args.child
        print(json.dumps(run_one(job, args.precision, args.warmup, args.seconds, float(start_at))))
        return 0
    if not args.gpu_model:
        ap.error("--gpu-model is required (the GPU model column of the table, e.g. h200)")
    common = ["--precision", args.precision, "--warmup", str(args.warmup),
              "--seconds", str(args.seconds)]  # fmt: skip
    rows: list[dict] = []

    def measured(procs: list[subprocess.Popen]) -> list[dict]:
        out = []
        for p in procs:
            text, _ = p.communicate(timeout=600)
            if p.returncode != 0:
                raise SystemExit(f"a measurement failed (exit {p.returncode})")
            out.append(json.loads(text.strip().splitlines()[-1]))
        return out

    for job in JOBS:
        (r,) = measured([child([*common, "--child", job, "0"])])
        rows.append({**r, "colocated": ""})
        print(f"{job}: {r['step_time_s'] * 1000:.2f} ms/step, {r['gpu_mem_mib']:.0f} MiB",
              file=sys.stderr, flush=True)  # fmt: skip
    if args.pairs:
        for a, b in PAIRS:
            start_at = time.time() + 35.0  # both warm up, then start timing together
            ra, rb = measured([child([*common, "--child", j, f"{start_at}"]) for j in (a, b)])
            rows.append({**ra, "colocated": b})
            rows.append({**rb, "colocated": a})
            print(f"{a} with {b}: {ra['step_time_s'] * 1000:.2f} / "
                  f"{rb['step_time_s'] * 1000:.2f} ms/step", file=sys.stderr, flush=True)  # fmt: skip
    out = args.output.open("w", newline="") if args.output else sys.stdout
    w = csv.writer(out)
    w.writerow(["gpu_model", "model", "colocated", "step_time_s", "gpu_mem_mib"])
    for r in rows:
        w.writerow([args.gpu_model, r["job"], r["colocated"], f"{r['step_time_s']:.6g}",
                    f"{r['gpu_mem_mib']:.0f}"])  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
