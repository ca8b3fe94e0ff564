"""Where the paper VAE's time goes, and the fast layers against the plain ones, in one process.

    python benchmarks/vae_profile.py               # batch 32, 7 alternated repeats
    python benchmarks/vae_profile.py --reps 11 --batch 32

1. Profile: `jax.profiler.trace` of two encode + decode calls (batch 32, the `paper` VAE with random
   weights), its XLA CPU thunk events summed by kernel kind (`ynn_fusion`: the XNNPACK/YNNPACK
   convolutions and matmuls; `conv_general_dilated`: Eigen convolutions; the named loop fusions:
   GroupNorm, SiLU, residual adds...). On the CPU the thunks' worker threads are only partly
   traced, so the shares are of the traced time, not of the wall time.
   From the same trace: how long each XLA worker thread is inside a thread-pool region during one
   call (working or spin-waiting for work; a thread that helps with another thread's matmul shows
   no op event of its own, only the region), and the matmuls (`ynn_fusion`s) grouped by their
   `(M, K) @ (K, N)` shape read from the compiled HLO, with GFLOP/s per traced op.
2. Variants, each compiled once and then timed alternately (A, B, C, A, B, C, ...): the model as
   it is (Winograd F(4, 3) for the convolutions of 128 channels or more, GroupNorm reduced over L first), and
   the plain layers put back by swapping the classes of the same parameter tree (`nnx.Conv`,
   flax's `nnx.GroupNorm`), separately and together. The relative error against the plain model
   is printed with each.
The header prints how busy the CPU was: on a shared CPU compare the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_speed import cpu_busy_fraction, device_line, init_params  # noqa: E402

from diffusets_jax.config import load_config  # noqa: E402
from diffusets_jax.models import build_vae  # noqa: E402
from diffusets_jax.models.layers import GroupNorm, WinogradConv1d  # noqa: E402


def trace_events(compiled, args, calls: int = 2) -> list[dict]:
    """The events of a `jax.profiler` (perfetto) trace of `calls` calls of `compiled(*args)`."""
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(compiled(*args))
        path = sorted(glob.glob(f"{tmp}/**/*perfetto_trace.json.gz", recursive=True))[-1]
        trace = json.load(gzip.open(path))
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def profile(events: list[dict], calls: int = 2) -> list[tuple[str, float, float]]:
    """(kernel kind, ms per call, share of traced op time) from the trace's events."""
    kinds = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("$", "Thunk", "end:", "Threadpool", "Pjit", "Common", "Slinky")):
            continue
        if name in (
            "ParseArguments",
            "Handle inputs",
            "Handle input event recording",
            "AllocateOutputBuffersWithInputReuse",
        ):
            continue
        kinds[re.sub(r"\.\d+$", "", name)] += e.get("dur", 0.0)
    total = sum(kinds.values()) or 1.0
    return [(k, v / 1e3 / calls, v / total) for k, v in kinds.most_common(10)]


def _last_call(events: list[dict]) -> tuple[float, float] | None:
    """(start, end) in µs of the last traced execution (the client thread's wait for the thunks)."""
    waits = [e for e in events if e.get("ph") == "X" and e.get("name", "").startswith("ThunkExecutor::Execute (wait")]
    if not waits:
        return None
    last = max(waits, key=lambda e: e["ts"])
    return last["ts"], last["ts"] + last["dur"]


def thread_activity(events: list[dict]) -> tuple[float, list[float], float] | None:
    """(call ms, per worker thread the share of the call spent inside thread-pool regions, share
    of the call with all workers inside one) for the last traced call; None without the events."""
    window = _last_call(events)
    threads = {
        e["tid"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name" and "XLAEigen" in e["args"].get("name", "")
    }
    if window is None or not threads:
        return None
    start, end = window
    active = np.zeros((len(threads), int(end - start) + 1), bool)  # 1 µs bins
    for row, tid in enumerate(sorted(threads)):
        marks = sorted(
            (e["ts"], e["name"])
            for e in events
            if e.get("tid") == tid and e.get("name", "").startswith("ThreadpoolListener::St")
        )
        opened = None
        for ts, name in marks:
            if name.endswith("StartRegion"):
                opened = ts
            elif opened is not None:
                a, b = max(opened, start), min(ts, end)
                if b > a:
                    active[row, int(a - start) : int(b - start)] = True
                opened = None
    return (end - start) / 1e3, list(active.mean(axis=1)), float(active.all(axis=0).mean())


def matmul_shapes(events: list[dict], hlo: str) -> list[tuple[str, int, float, float]]:
    """The `ynn_fusion` matmuls of the last traced call grouped by `(M, K) @ (K, N)` (read from
    the compiled HLO's operand shapes): (shape, count, traced ms, GFLOP/s per traced op time)."""
    window = _last_call(events)
    if window is None:
        return []
    shapes = dict(re.findall(r"%(\S+) = \w+\[([\d,]*)\]", hlo))

    def dims(operand: str) -> list[int]:
        return [int(d) for d in shapes.get(operand, "").split(",") if d]

    matmuls = {}  # fusion name -> (shape, FLOP)
    for name, a, b in re.findall(r"%(ynn_fusion\.\d+) = \S+ fusion\(%([^,)]+), %([^,)]+)\)", hlo):
        lhs, rhs = dims(a), dims(b)
        if len(lhs) == 2 and len(rhs) == 2 and lhs[1] == rhs[0]:
            matmuls[name] = f"({lhs[0]}, {lhs[1]}) @ ({rhs[0]}, {rhs[1]})", 2 * lhs[0] * lhs[1] * rhs[1]
    groups = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for e in events:
        if e.get("ph") == "X" and e.get("name") in matmuls and window[0] <= e["ts"] <= window[1]:
            shape, flop = matmuls[e["name"]]
            groups[shape][0] += 1
            groups[shape][1] += e["dur"]
            groups[shape][2] += flop
    rows = [(shape, n, us / 1e3, flop / us / 1e3) for shape, (n, us, flop) in groups.items()]
    return sorted(rows, key=lambda row: -row[2])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)

    busy = cpu_busy_fraction()
    print(f"# The paper VAE, encode + decode of {args.batch} ECGs\n\n- {device_line()}")
    print(f"- CPU busy with other work at start: {'unknown' if busy is None else f'{100 * busy:.0f}%'}\n")
    config = load_config("paper")
    graphdef, treedef, leaves = init_params(build_vae, config)
    x = jax.random.normal(jax.random.key(0), (args.batch, 1024, 12)) * 0.3
    noise = jax.random.normal(jax.random.key(1), (args.batch, 128, 4))

    def variant(plain_conv: bool, plain_norm: bool):
        def encode_decode(leaves, x, noise):
            vae = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
            for _, module in nnx.iter_graph(vae):
                if plain_conv and type(module) is WinogradConv1d:
                    module.__class__ = nnx.Conv
                if plain_norm and type(module) is GroupNorm:
                    module.__class__ = nnx.GroupNorm
            return vae.decoder(vae.encoder(x, noise)[0])

        return encode_decode

    variants = {
        "as is (Winograd >= 128-ch convs + GroupNorm over L first)": variant(False, False),
        "plain nnx.Conv, GroupNorm over L first": variant(True, False),
        "Winograd, flax nnx.GroupNorm": variant(False, True),
        "plain nnx.Conv + flax nnx.GroupNorm (before issue 19)": variant(True, True),
    }
    compiled = {name: jax.jit(fn).lower(leaves, x, noise).compile() for name, fn in variants.items()}
    outputs = {name: np.asarray(c(leaves, x, noise)) for name, c in compiled.items()}
    reference = outputs[list(variants)[-1]]

    as_is = compiled[list(variants)[0]]
    events = trace_events(as_is, (leaves, x, noise))
    print("| kernel kind (traced op time, model as is) | ms per call | share |\n|---|---|---|")
    for kind, ms, share in profile(events):
        print(f"| `{kind}` | {ms:.1f} | {100 * share:.0f} % |")
    activity = thread_activity(events)
    if activity is not None:
        call_ms, per_thread, together = activity
        shares = ", ".join(f"{100 * share:.0f} %" for share in per_thread)
        print(
            f"\nOne traced call, {call_ms:.0f} ms: the {len(per_thread)} XLA worker threads were inside "
            f"thread-pool regions (working or waiting for work) {shares} of it, all at once {100 * together:.0f} %."
        )
    rows = matmul_shapes(events, as_is.as_text())
    if rows:
        print("\n| matmul (one traced call) | count | traced ms | GFLOP/s per op |\n|---|---|---|---|")
        for shape, count, ms, rate in rows[:12]:
            print(f"| {shape} | {count} | {ms:.1f} | {rate:.0f} |")

    times = {name: [] for name in variants}
    for _ in range(args.reps):
        for name, c in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(c(leaves, x, noise))
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times[list(variants)[-1]])
    print("\n| variant | median | min | / plain | rel. error vs plain |\n|---|---|---|---|---|")
    for name in variants:
        err = np.linalg.norm(outputs[name] - reference) / np.linalg.norm(reference)
        med = statistics.median(times[name])
        print(f"| {name} | {med:.2f} s | {min(times[name]):.2f} s | {med / base:.2f} | {err:.1e} |")
    busy = cpu_busy_fraction()
    print(f"\nCPU busy with other work at the end: {'unknown' if busy is None else f'{100 * busy:.0f}%'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
