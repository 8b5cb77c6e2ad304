"""Per-face latency of emotion models, measured back to back in one process.

A model card states the latency measured when the model was exported, on whatever machine
did that; cards from different days are not comparable. This times every model given
(default: every ``models/*.tflite``) with the daemon's interpreter loader, one thread,
in alternating rounds, so the models share the machine's state and the comparison holds
even where the absolute numbers do not.

Run: ``.venv/bin/python benchmarks/bench_model_latency.py [MODEL.tflite ...] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="default: every models/*.tflite")
    parser.add_argument("--invokes", type=int, default=500, help="timed invokes per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    models = args.models or sorted((REPO / "models").glob("*.tflite"))
    missing = [str(m) for m in models if not m.is_file()]
    if missing or not models:
        print(f"bench_model_latency: no model file at {', '.join(missing) or 'models/*.tflite'}: "
              "pass exported .tflite files", file=sys.stderr)
        return 2
    if args.invokes < 1 or args.rounds < 1:
        parser.error("--invokes and --rounds must be at least 1")

    from relaxd_train.export import measure_latency_ms

    face = np.random.default_rng(0).random((48, 48, 1), dtype=np.float32)
    rounds: dict[str, list[float]] = {str(m): [] for m in models}
    for _ in range(args.rounds):
        for model in models:
            rounds[str(model)].append(measure_latency_ms(model, face, args.invokes, warmup=20))
    result = {name: {"median_ms": statistics.median(times), "rounds_ms": times} for name, times in rounds.items()}
    if args.json:
        print(json.dumps(result))
    else:
        for name, figures in result.items():
            print(f"{figures['median_ms']:.3f} ms per face  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
