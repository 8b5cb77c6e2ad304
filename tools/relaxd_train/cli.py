"""``train-and-export``: command-line entry point; one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relaxd.vision.preprocess import PreprocessSpec
from relaxd_train.augment import AugmentSettings
from relaxd_train.data import DataError


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from relaxd_train.architectures import ARCHITECTURES
    from relaxd_train.train import CLASS_WEIGHTINGS, TrainSettings

    defaults = TrainSettings()
    p = sub.add_parser("train", help="train a model from scratch (or --resume an interrupted run)")
    p.add_argument("--data", type=Path, required=True,
                   help="data set: FER2013 CSV, or a folder with train/ and val/ class folders")
    p.add_argument("--out", type=Path, required=True, help="run directory for checkpoints and logs")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default=defaults.arch)
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    p.add_argument("--class-weighting", choices=CLASS_WEIGHTINGS, default=defaults.class_weighting,
                   help="imbalance handling: inverse-frequency weights (balanced), their square root, or none")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--input-size", type=int, default=defaults.preprocess.input_size)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    aug = p.add_argument_group("augmentation (0 switches a part off)")
    for name in AugmentSettings.names():
        default = getattr(AugmentSettings(), name)
        flag = "--aug-" + name.replace("_", "-")
        if isinstance(default, bool):
            aug.add_argument(flag, type=lambda v: v.lower() in ("1", "true", "yes", "on"), default=default,
                             metavar="on|off")
        else:
            aug.add_argument(flag, type=type(default), default=default)
    p.add_argument("--no-augment", action="store_true", help="switch every augmentation off")


def run_train(args: argparse.Namespace) -> int:
    from relaxd_train.data import load_split
    from relaxd_train.train import TrainSettings, train

    augment = AugmentSettings.none() if args.no_augment else AugmentSettings(
        **{name: getattr(args, "aug_" + name) for name in AugmentSettings.names()})
    spec = PreprocessSpec(input_size=args.input_size)
    settings = TrainSettings(
        arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        class_weighting=args.class_weighting, seed=args.seed, preprocess=spec, augment=augment,
    )
    train_data = load_split(args.data, "train", spec)
    val_data = load_split(args.data, "val", spec)
    state = train(train_data, val_data, settings, args.out, resume=args.resume)
    print(f"best val accuracy {state['best_val_accuracy']:.4f} at epoch {state['best_epoch']}; "
          f"checkpoint {args.out / 'best.keras'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train-and-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    return parser


COMMANDS = {"train": run_train}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DataError, FileExistsError) as error:
        print(f"train-and-export: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
