"""How closely do generated ECGs follow the requested heart rate?

Generates ECGs for several requested rates and seeds with a pretrained model (default: the shipped
one), measures each ECG's rate with the same XQRS-based detector as `prepare`
(`diffusets_jax.data_pipelines.records.detect_heart_rate`, at 102.4 Hz) and prints a Markdown table.

    python benchmarks/heart_rate_fidelity.py --rates 60 80 110 --seeds 0 1 2 --num-samples 4
"""

import argparse
import time

import numpy as np

from diffusets_jax.data_pipelines.records import RecordError, detect_heart_rate
from diffusets_jax import FS, Pipeline


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="pretrained model directory (default: shipped model)")
    parser.add_argument("--report", default="Sinus rhythm", help="report statements, '|'-separated")
    parser.add_argument("--rates", type=float, nargs="+", default=[60, 80, 110])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-samples", type=int, default=4, help="ECGs per (rate, seed)")
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--age", type=float, default=60)
    parser.add_argument("--sex", default="M")
    args = parser.parse_args()

    pipe = Pipeline.from_pretrained(args.checkpoint)
    rows = []
    start = time.perf_counter()
    for rate in args.rates:
        measured, missing = [], 0
        for seed in args.seeds:
            out = pipe(
                args.report,
                age=args.age,
                sex=args.sex,
                heart_rate=rate,
                num_samples=args.num_samples,
                seed=seed,
                num_steps=args.num_steps,
            )
            for i, signal in enumerate(out.signals):
                try:
                    measured.append(detect_heart_rate(signal, FS, record_id=f"hr{rate:g}-seed{seed}-{i}"))
                except RecordError:
                    missing += 1
        m = np.array(measured)
        rows.append((rate, len(m), missing, m.mean(), m.std(), np.median(m), np.abs(m - rate).mean()))
    print(
        f"report {args.report!r}, age {args.age:g}, sex {args.sex}, seeds {args.seeds}, "
        f"{args.num_samples} ECGs each, "
        f"{pipe.config.sampling.num_steps if args.num_steps is None else args.num_steps} steps "
        f"({time.perf_counter() - start:.0f} s)\n"
    )
    print("| requested bpm | ECGs measured | no rhythm found | measured mean ± sd | median | MAE |")
    print("|---|---|---|---|---|---|")
    for rate, n, missing, mean, sd, median, mae in rows:
        print(f"| {rate:g} | {n} | {missing} | {mean:.1f} ± {sd:.1f} | {median:.1f} | {mae:.1f} |")


if __name__ == "__main__":
    main()
