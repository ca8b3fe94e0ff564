"""Cold and warm start of `diffusets-jax generate`: seconds from the command to the first ECG written.

    python benchmarks/start_time.py                 # 1 cold + 3 warm runs, then the warm phases
    python benchmarks/start_time.py --warm-runs 5 --no-phases

Each run is a fresh process, `python -m diffusets_jax.cli generate --report "Sinus rhythm" --age 60
--sex M --hr 70 --num-samples 1 --sampler ddim --num-steps 50 --guidance-scale 3 --out DIR
--overwrite` (one ECG, DDIM 50 steps, guidance 3, the shipped model), with the compilation cache
in a fresh temporary directory (`DIFFUSETS_JAX_CACHE_DIR`): the first run finds it empty (cold:
every program compiles), later runs load the compiled programs (warm). Also one run with
`--no-compile-cache`, when the CLI has that option. The prompt-embedding cache
(`text.CachedEmbedder`) is also fresh: cold runs load the text model, warm ones find the prompt.
"First ECG" is the modification time of `ecg_000.hea`; "exit" the process's end (it still writes
the PNG and `samples.npz`).

The phases (`--phases`, default on) time the same steps inside one warm process: imports, model
load, text embedder, sampling + decode, writing. The header prints how busy the CPU was.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchmark_speed import cpu_busy_fraction  # noqa: E402

ARGS = [
    "generate",
    "--report",
    "Sinus rhythm",
    "--age",
    "60",
    "--sex",
    "M",
    "--hr",
    "70",
    "--num-samples",
    "1",
    "--sampler",
    "ddim",
    "--num-steps",
    "50",
    "--guidance-scale",
    "3",
    "--overwrite",
]

PHASES = r"""
import json, sys, time
marks, last = {}, time.perf_counter()
def mark(name):
    global last
    now = time.perf_counter(); marks[name] = now - last; last = now
import jax
from diffusets_jax import compile_cache
compile_cache.enable()
from diffusets_jax.pipeline import Pipeline, write_outputs
mark("import jax + diffusets_jax.pipeline")
from diffusets_jax.pretrained import DEFAULT_MODEL_DIR, load_pretrained
config, vae, unet = load_pretrained(DEFAULT_MODEL_DIR)
mark("load_pretrained (build models + read .npz)")
pipe = Pipeline(config, vae, unet)  # the default embedder: prompts remembered across processes
pipe.embed(["Sinus rhythm"])
mark("text embedding of the prompt (remembered by the earlier runs)")
kw = dict(age=60, sex="M", heart_rate=70, num_samples=1, sampler="ddim", num_steps=50, guidance_scale=3.0)
result = pipe("Sinus rhythm", **kw)
mark("first generation (load the traced and the compiled sampler + sample + decode)")
pipe("Sinus rhythm", **kw)
mark("  (a second generation, for comparison)")
write_outputs(result, sys.argv[1], overwrite=True)
mark("write_outputs (WFDB + PNG + npz)")
from diffusets_jax.text import get_embedder
get_embedder(config.text.embedder).embed(["a prompt never seen before"])
mark("  (a new prompt instead: import the text model, load it, embed)")
print("PHASES " + json.dumps(marks))
"""


def run(cmd: list[str], env: dict, out: Path) -> tuple[float, float | None, int]:
    """(seconds to exit, seconds to `ecg_000.hea`, exit status) of one fresh process."""
    start_wall = time.time()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    total = time.perf_counter() - start
    header = out / "ecg_000.hea"
    first = header.stat().st_mtime - start_wall if header.is_file() else None
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
    return total, first, proc.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--no-phases", action="store_true", help="skip the in-process breakdown")
    parser.add_argument("--no-uncached", action="store_true", help="skip the --no-compile-cache run")
    args = parser.parse_args(argv)

    busy = cpu_busy_fraction()
    print("# `diffusets-jax generate`: cold and warm start (one ECG, DDIM 50, guidance 3)\n")
    print(
        f"- {os.cpu_count()} CPUs; CPU busy with other work at start: "
        f"{'unknown' if busy is None else f'{100 * busy:.0f}%'}\n"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="diffusets-start-") as tmp:
        tmp = Path(tmp)
        env = {
            **os.environ,
            "DIFFUSETS_JAX_CACHE_DIR": str(tmp / "cache"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "DIFFUSETS_JAX_EMBEDDING_CACHE_DIR": str(tmp / "embeddings"),
        }
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        out = tmp / "out"
        cmd = [sys.executable, "-m", "diffusets_jax.cli", *ARGS, "--out", str(out)]
        help_text = subprocess.run(
            [sys.executable, "-m", "diffusets_jax.cli", "--help"], env=env, cwd=ROOT, capture_output=True, text=True
        ).stdout
        if not args.no_uncached and "--no-compile-cache" in help_text:
            uncached = {**env, "DIFFUSETS_JAX_EMBEDDING_CACHE_DIR": str(tmp / "embeddings-uncached-run")}
            rows.append(("no cache (`--no-compile-cache`)", *run(cmd + ["--no-compile-cache"], uncached, out)))
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
        rows.append(("cold (empty cache)", *run(cmd, env, out)))
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
        warm = [run(cmd, env, out) for _ in range(args.warm_runs)]
        for i, w in enumerate(warm):
            print(f"  warm {i}: {w}", file=sys.stderr, flush=True)
        if warm:
            rows.append(
                (
                    f"warm (median of {len(warm)})",
                    statistics.median(w[0] for w in warm),
                    statistics.median(w[1] for w in warm if w[1] is not None) if any(w[1] for w in warm) else None,
                    max(w[2] for w in warm),
                )
            )
        cache_files = [p for p in (tmp / "cache").rglob("*") if p.is_file()]
        cache_mib = sum(p.stat().st_size for p in cache_files) / 2**20

        print("| run | to first ECG written | to exit | exit status |\n|---|---|---|---|")
        for name, total, first, code in rows:
            print(f"| {name} | {'–' if first is None else f'{first:.1f} s'} | {total:.1f} s | {code} |")
        print(f"\nCache after the runs: {len(cache_files)} files, {cache_mib:.1f} MiB.")

        if not args.no_phases:
            proc = subprocess.run(
                [sys.executable, "-c", PHASES, str(tmp / "phases")], env=env, cwd=ROOT, capture_output=True, text=True
            )
            line = next((out for out in proc.stdout.splitlines() if out.startswith("PHASES ")), None)
            if line is None:
                print(proc.stderr[-2000:], file=sys.stderr)
            else:
                print("\n| phase of a warm start (one process) | seconds |\n|---|---|")
                for name, seconds in json.loads(line[len("PHASES ") :]).items():
                    print(f"| {name} | {seconds:.2f} |")
    busy = cpu_busy_fraction()
    print(f"\nCPU busy with other work at the end: {'unknown' if busy is None else f'{100 * busy:.0f}%'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
