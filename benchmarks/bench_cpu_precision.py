"""CPU training step in float32 against bfloat16 autocast (oneDNN uses AMX / AVX-512 BF16 where the CPU has them).

The CPU preset's network (configs/cpu_fields.yaml: MONAI residual UNet, channels-last) and batch (16 x 128 x 128),
one forward / L1 loss / backward / AdamW step per iteration, the same random batch for both precisions. Prints the
median seconds per step of each (after warm-up, rounds interleaved so drift hits both) and the ratio, plus the
largest relative difference of the first step's loss and gradient norm (bf16 keeps 8 mantissa bits).

    python benchmarks/bench_cpu_precision.py [--steps 10] [--rounds 3] [--batch 16] [--size 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.networks import NetworkSpec, build_network

NETWORK = {"name": "monai_unet", "options": {"channels": [16, 32, 64, 128, 256], "num_res_units": 2,
                                              "norm": "batch"}}


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return ",".join(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile")) or "no bf16 units"


def step(net, opt, x, y, bf16: bool) -> tuple[float, float]:
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = net(x)
    loss = torch.nn.functional.l1_loss(torch.sigmoid(out.float()), y)
    loss.backward()
    gnorm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in net.parameters() if p.grad is not None))
    opt.step()
    return float(loss.detach()), float(gnorm.detach())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    x = torch.rand(a.batch, 1, a.size, a.size).contiguous(memory_format=torch.channels_last)
    y = torch.rand(a.batch, 1, a.size, a.size)
    nets, opts = {}, {}
    for mode in ("fp32", "bf16"):
        torch.manual_seed(0)
        nets[mode] = build_network(NetworkSpec(**NETWORK), 1, 1, 2).to(memory_format=torch.channels_last)
        opts[mode] = torch.optim.AdamW(nets[mode].parameters(), lr=1e-3)
    first = {m: step(nets[m], opts[m], x, y, m == "bf16") for m in nets}  # identical weights: compare numbers
    for m in nets:  # warm-up (oneDNN primitive caches)
        for _ in range(2):
            step(nets[m], opts[m], x, y, m == "bf16")
    per_step = {m: [] for m in nets}
    for _ in range(a.rounds):
        for m in nets:
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step(nets[m], opts[m], x, y, m == "bf16")
            per_step[m].append((time.perf_counter() - t0) / a.steps)
    med = {m: statistics.median(v) for m, v in per_step.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU units: {cpu_flags()}")
    print(f"batch {a.batch} x {a.size} x {a.size}, {a.steps} steps x {a.rounds} rounds")
    for m in nets:
        print(f"{m}: {med[m]:.3f} s/step (rounds: {', '.join(f'{v:.3f}' for v in per_step[m])})")
    print(f"speed-up bf16 autocast: {med['fp32'] / med['bf16']:.2f}x")
    rel = {k: abs(first["bf16"][i] - first["fp32"][i]) / abs(first["fp32"][i]) for i, k in enumerate(("loss", "grad"))}
    print(f"first step, relative difference bf16 vs fp32: loss {rel['loss']:.2e}, gradient norm {rel['grad']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
