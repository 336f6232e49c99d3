"""Benchmark 6: samples per second of a fixed plan, eager, compiled and as one CUDA graph, beside diffusers' loop.

Two networks: the built-in digits U-Net (1x8x8) and a small diffusers ``UNet2DModel`` with random
weights (3x32x32), both epsilon predictors on the DDPM schedule (betas linspace(1e-4, 0.02, 1000)).
For each network and NFE (10 and 20), DPM-Solver++(2M) runs as

* ``diffode eager``: :class:`diffode.PlanSampler` with ``mode="eager"`` (the loop of ``diffode.solve``);
* ``diffode compiled``: ``mode="compile"``, the whole loop as one ``torch.compile`` graph;
* ``diffode CUDA graph``: ``mode="cuda_graph"``, the loop recorded once and replayed (CUDA only);
* ``diffusers loop``: diffusers' pipeline loop, ``scheduler.step(unet(x, t), t, x).prev_sample`` in
  Python over ``DPMSolverMultistepScheduler(solver_order=2)``'s timesteps, with the same network.

Each figure is the median over ``--repeat`` timed batches after warm-up (compilation and capture
are timed apart, in their own column); the rows of one network and NFE are interleaved round by
round so that a change in the machine's load hits all alike. ``vs diffusers`` is the ratio of
samples per second; ``max abs diff`` compares a diffode row's samples with diffode eager's on the same
batch (float round-off; diffusers' rows have none: its discrete timesteps and final step to
sigma = 0 make another grid, so the same samples are not expected).

    python benchmarks/gpu_throughput.py --device cuda --out benchmarks/results/throughput_cuda.md
    python benchmarks/gpu_throughput.py --device cpu --quick   # small sizes, a few minutes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import _common
import torch
from _common import markdown_table

import diffode as dd
from diffode.models.digits import digits_betas, load_digits_model

FAILURES: list[str] = []  # rows that could not be built, with the error
BETAS = digits_betas()  # linspace(1e-4, 0.02, 1000): the digits network's schedule, used for both networks


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class UNetEps(torch.nn.Module):
    """A diffusers ``UNet2DModel`` as ``net(x, t_input) -> eps``."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t, return_dict=False)[0]


def small_unet(diffusers, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(32, 64), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    return UNetEps(unet)


def networks(args, device, diffusers) -> list[tuple[str, torch.nn.Module, tuple[int, ...], int]]:
    """(label, network, sample shape, batch) of each network benchmarked."""
    out = []
    if "digits" in args.models:
        out.append(("digits U-Net 1x8x8", load_digits_model(device=device), (1, 8, 8), args.batch_digits))
    if "unet" in args.models and diffusers is not None:
        net = small_unet(diffusers, args.unet_size).to(device).eval()
        out.append((f"diffusers UNet2DModel 3x{args.unet_size}x{args.unet_size}", net,
                    (3, args.unet_size, args.unet_size), args.batch_unet))
    return out


def diffusers_loop(diffusers, net, steps: int):
    scheduler = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, trained_betas=BETAS.numpy(),
                                                      solver_order=2, prediction_type="epsilon")

    def run(x):
        scheduler.set_timesteps(steps, device=x.device)
        y = x
        for t in scheduler.timesteps:
            y = scheduler.step(net(y, t.expand(y.shape[0]).float()), t, y).prev_sample
        return y

    return run


def build_rows(args, device, diffusers, net, shape, batch, nfe, x):
    """(name, run(x) -> samples, seconds spent building) of every row of one network and NFE."""
    schedule = dd.DiscreteVP(betas=BETAS)
    dtype = getattr(torch, args.network_dtype)
    model = dd.wrap(net.to(dtype), schedule, "noise", time_input="discrete",
                    network_dtype=None if dtype == torch.float32 else dtype)
    integrator = dd.get_integrator("dpmpp_2m")
    plan = integrator.plan(schedule, nfe, grid="time_uniform")
    rows = []
    for mode in args.modes:
        if mode == "cuda_graph" and device.type != "cuda":
            continue
        if mode == "diffusers":
            if diffusers is not None and dtype == torch.float32:
                rows.append(("diffusers loop", diffusers_loop(diffusers, net, nfe), 0.0))
            continue
        label = {"eager": "diffode eager", "compile": "diffode compiled", "cuda_graph": "diffode CUDA graph"}[mode]
        start = time.perf_counter()
        try:
            sampler = dd.PlanSampler(model, integrator, plan, x, mode=mode)
            if mode == "compile":
                sampler(x)  # compiles here
            sync(device)
        except Exception as error:  # noqa: BLE001 - a row that cannot be built is reported, the others still run
            FAILURES.append(f"{label}, NFE {nfe}: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
            print(FAILURES[-1], file=sys.stderr)
            continue
        rows.append((label, sampler, time.perf_counter() - start))
    return rows


def measure(args, device, diffusers, done) -> list[list[str]]:
    """Every row; ``done(table)`` is called after each network and NFE (so a run cut short keeps its rows)."""
    table = []
    for label, net, shape, batch in networks(args, device, diffusers):
        for nfe in args.nfe:
            x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
            with torch.inference_mode(False), torch.no_grad():
                rows = build_rows(args, device, diffusers, net, shape, batch, nfe, x)
                outputs = {name: run(x) for name, run, _ in rows}
                times = {name: [] for name, _, _ in rows}
                for r in range(args.repeat):
                    shift = r % len(rows)
                    for name, run, _ in rows[shift:] + rows[:shift]:
                        sync(device)
                        start = time.perf_counter()
                        run(x)
                        sync(device)
                        times[name].append(time.perf_counter() - start)
            rate = {name: batch / statistics.median(t) for name, t in times.items()}
            base = outputs.get("diffode eager")
            for name, _, build in rows:
                versus = f"{rate[name] / rate['diffusers loop']:.2f}x" if "diffusers loop" in rate else "-"
                same_grid = base is not None and name.startswith("diffode")  # diffusers' grid differs: no round-off check
                diff = f"{(outputs[name].float() - base.float()).abs().max().item():.1e}" if same_grid else "-"
                table.append([label, str(nfe), str(batch), name, f"{rate[name]:.1f}", versus,
                              f"{build:.1f}" if build else "-", diff])
                print(" | ".join(table[-1]), file=sys.stderr, flush=True)
            done(table)
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--models", nargs="+", default=["digits", "unet"], choices=["digits", "unet"])
    parser.add_argument("--modes", nargs="+", default=["eager", "compile", "cuda_graph", "diffusers"],
                        choices=["eager", "compile", "cuda_graph", "diffusers"])
    parser.add_argument("--batch-digits", type=int, default=None, help="default 1024 on CUDA, 64 on the CPU")
    parser.add_argument("--batch-unet", type=int, default=None, help="default 64 on CUDA, 4 on the CPU")
    parser.add_argument("--unet-size", type=int, default=32)
    parser.add_argument("--network-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="run the networks in this dtype, the solver state in float32 (diffusers rows: float32 only)")
    parser.add_argument("--repeat", type=int, default=None, help="timed batches per row (default 20 on CUDA, 5 on the CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="CPU smoke sizes: batch 16/2, unet 16x16, 3 repeats")
    parser.add_argument("--note", default="", help="a line added under the table (e.g. that the machine was shared)")
    parser.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.quick:
        args.batch_digits, args.batch_unet, args.unet_size = 16, 2, 16
        args.repeat = args.repeat or 3
    args.batch_digits = args.batch_digits or (1024 if cuda else 64)
    args.batch_unet = args.batch_unet or (64 if cuda else 4)
    args.repeat = args.repeat or (20 if cuda else 5)
    _common.set_threads(args.threads)
    diffusers = _common.load_diffusers() if ("unet" in args.models or "diffusers" in args.modes) else None
    if diffusers is not None:
        diffusers.utils.logging.set_verbosity_error()
    started = time.perf_counter()
    command = " ".join(sys.argv[1:] if argv is None else argv)

    def render(table: list[list[str]], final: bool) -> str:
        header = ["network", "NFE", "batch", "sampler", "samples/s", "vs diffusers", "build s", "max abs diff vs eager"]
        lines = [f"# Throughput of a fixed plan ({device.type})", "",
                 (f"DPM-Solver++(2M), time-uniform grid, network in {args.network_dtype}, state in float32; median of "
                  f"{args.repeat} timed batches per row after warm-up; `build s` is the compile or capture time "
                  f"(spent once per sampler). Command: `python benchmarks/gpu_throughput.py {command}` "
                  f"({time.perf_counter() - started:.0f} s {'in all' if final else 'so far: the run is not finished'})."),
                 "", markdown_table(header, table), "", f"Environment: {_common.environment()}."]
        if FAILURES:
            lines += ["", "Rows that could not be built:", ""] + [f"* {line}" for line in FAILURES]
        if args.note:
            lines += ["", args.note]
        return "\n".join(lines)

    def write(table: list[list[str]], final: bool = False) -> None:
        if args.out:
            with open(args.out, "w") as f:
                f.write(render(table, final).rstrip() + "\n")

    table = measure(args, device, diffusers, write)
    write(table, final=True)
    print(render(table, True))
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
