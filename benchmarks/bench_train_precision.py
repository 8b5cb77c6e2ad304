"""Training speed of relaxnet in float32 against bfloat16 mixed precision, in one process.

`train-and-export train --precision bfloat16` computes in bfloat16 with float32 weights.
On a CPU with AVX512-BF16 (oneDNN) that is faster per epoch; on one without, it can be
slower. This measures both on the same machine, one after the other, on the same random
48x48 batches (speed does not depend on the pixels), and reports milliseconds per training
image and the ratio, so the number that matters is the ratio, not the noisy absolute time.

Each precision: one warm-up fit (graph tracing), then ``--rounds`` timed fits of
``--batches`` batches; the median round counts.

Run: ``.venv/bin/python benchmarks/bench_train_precision.py [--batch-size 128] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import numpy as np  # noqa: E402

FER2013_TRAIN_IMAGES = 28_709


def ms_per_image(precision_name: str, batch_size: int, batches: int, rounds: int) -> float:
    """Median milliseconds per training image of relaxnet under ``precision_name``."""
    import keras
    import tensorflow as tf

    from relaxd_train.architectures import build, precision

    rng = np.random.default_rng(0)
    images = rng.random((batch_size * batches, 48, 48, 1), dtype=np.float32)
    onehot = np.eye(7, dtype=np.float32)[rng.integers(0, 7, len(images))]
    data = tf.data.Dataset.from_tensor_slices((images, onehot)).batch(batch_size).cache()
    with precision(precision_name):
        model = build("relaxnet", 48, 7)
        model.compile(optimizer=keras.optimizers.SGD(0.001, momentum=0.9), loss="categorical_crossentropy")
        model.fit(data, epochs=1, verbose=0)
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            model.fit(data, epochs=1, verbose=0)
            times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times) / len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=12, help="batches per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.batches, args.rounds) < 1:
        parser.error("--batch-size, --batches and --rounds must be at least 1")
    result = {"batch_size": args.batch_size, "images_per_round": args.batch_size * args.batches}
    for name in ("float32", "bfloat16"):
        result[f"{name}_ms_per_image"] = ms_per_image(name, args.batch_size, args.batches, args.rounds)
        result[f"{name}_fer2013_epoch_s"] = result[f"{name}_ms_per_image"] * FER2013_TRAIN_IMAGES / 1000.0
    result["bfloat16_speedup"] = result["float32_ms_per_image"] / result["bfloat16_ms_per_image"]
    if args.json:
        print(json.dumps(result))
    else:
        for name in ("float32", "bfloat16"):
            print(f"{name:9s} {result[f'{name}_ms_per_image']:.2f} ms per image "
                  f"(a FER2013 epoch without augmentation: {result[f'{name}_fer2013_epoch_s']:.0f} s)")
        print(f"bfloat16 is {result['bfloat16_speedup']:.2f}x float32 (batch {args.batch_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
