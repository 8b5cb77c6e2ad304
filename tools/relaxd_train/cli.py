"""train-and-export: train, export, evaluate, explain and fine-tune the chair's emotion model.

Subcommands: train, export, evaluate, decision, saliency, finetune, info, card. Run one with --help.
TensorFlow is imported only inside the commands that need it, so --help is instant.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any TensorFlow import: no C++ info/warning spam

import argparse
import json
import math
import shlex
import sys
from contextlib import redirect_stdout
from pathlib import Path

from relaxd.errors import RelaxdError
from relaxd.logs import configure_logging
from relaxd.vision.model_meta import load_metadata, metadata_path
from relaxd.vision.preprocess import PreprocessSpec
from relaxd.vision.runtime import without_native_lines
from relaxd_train.architectures import ARCHITECTURES, PRECISIONS
from relaxd_train.augment import AugmentSettings
from relaxd_train.train import CLASS_WEIGHTINGS, OPTIMIZERS, TrainSettings


def on_off(value: str) -> bool:
    """Parse an on|off flag value strictly (a typo must not silently mean off)."""
    key = value.strip().lower()
    if key in ("1", "true", "yes", "on"):
        return True
    if key in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")


def add_train_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--group-loss-weight", type=float, default=defaults.group_loss_weight, metavar="W",
                   help="add W x the cross-entropy of the chair's groups (negative/neutral/positive, summed "
                        "label probabilities) to the labels' cross-entropy (0: off)")
    p.add_argument("--class-weighting", choices=CLASS_WEIGHTINGS, default=defaults.class_weighting,
                   help="imbalance handling: inverse-frequency weights (balanced), their square root, or none")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--input-size", type=int, default=defaults.preprocess.input_size)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (with the run's own settings)")
    p.add_argument("--init-from", type=Path, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (same --arch) with this run's settings: "
                        "a warm restart of an earlier run; a shipped relaxnet .tflite works too")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer,
                   help="adamw (default), or sgd with momentum 0.9: for warm restarts, where AdamW's first "
                        "steps cost about 2 points of FER val")
    p.add_argument("--freeze-batchnorm", action="store_true",
                   help="keep every BatchNorm layer as trained (with --init-from: the shipped statistics)")
    p.add_argument("--average-from-epoch", type=int, default=defaults.average_from_epoch, metavar="N",
                   help="stochastic weight averaging: from epoch N on, average each epoch's weights into "
                        "RUN/average.keras (BatchNorm re-measured; val printed) at a constant learning rate "
                        "after the warm-up (0: off)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default=defaults.precision,
                   help="bfloat16: mixed precision, about 1.9x faster per training step on a CPU with AVX512-BF16 "
                        "(benchmarks/bench_train_precision.py); "
                        "checkpoints export as float32 either way")
    p.add_argument("--mixup-alpha", type=float, default=defaults.mixup_alpha,
                   help="blend pairs of training faces and labels, Beta(alpha, alpha) (0: off; try 0.2)")
    p.add_argument("--extra-train", type=Path, action="append", default=[], metavar="DIR",
                   help="more labelled faces in DIR/<class>/ (e.g. ../shared/data/ckplus) added to training; "
                        "repeatable")
    p.add_argument("--extra-held-out-share", type=float, default=0.3, metavar="SHARE",
                   help="share of the extra data's subjects (file prefix before '_') kept out of training, "
                        "for `evaluate --held-out-share` (default 0.3)")
    p.add_argument("--extra-repeat", type=int, default=1, metavar="N",
                   help="each extra image appears N times per epoch (default 1)")
    aug = p.add_argument_group("augmentation (0 switches a part off)")
    for name in AugmentSettings.names():
        default = getattr(AugmentSettings(), name)
        flag = "--aug-" + name.replace("_", "-")
        if isinstance(default, bool):
            aug.add_argument(flag, type=on_off, default=default, metavar="on|off")
        else:
            aug.add_argument(flag, type=type(default), default=default)
    p.add_argument("--no-augment", action="store_true", help="switch every augmentation off")


def with_extra_data(train_data, extra: Path, spec: PreprocessSpec, held_out_share: float, repeat: int):
    """``train_data`` with the trained subjects of ``extra`` appended ``repeat`` times."""
    import numpy as np

    from relaxd_train.data import Dataset, list_class_folders, split_by_subject, to_dataset

    trained, held = split_by_subject(list_class_folders(extra, train_data.label_names), held_out_share)
    added = to_dataset(trained, spec, train_data.label_names, str(extra))
    print(f"{extra}: {len(trained)} images added x{repeat}, {len(held)} of held-out subjects kept out", flush=True)
    images = np.concatenate([train_data.images] + [added.images] * repeat)
    labels = np.concatenate([train_data.labels] + [added.labels] * repeat)
    return Dataset(images, labels, train_data.label_names,
                   f"{train_data.source} + {extra} (trained subjects, x{repeat})")


def run_train(args: argparse.Namespace) -> int:
    from relaxd_train.data import DataError, load_split
    from relaxd_train.export import read_run_state
    from relaxd_train.train import train

    augment = AugmentSettings.none() if args.no_augment else AugmentSettings(
        **{name: getattr(args, "aug_" + name) for name in AugmentSettings.names()})
    spec = PreprocessSpec(input_size=args.input_size)
    state_file = args.out / "state.json"
    if args.resume and state_file.is_file():  # a resumed run keeps the contract it was trained with
        spec = TrainSettings.from_dict(json.loads(state_file.read_text())["settings"]).preprocess
    elif args.init_from is not None and args.init_from.suffix == ".tflite":
        spec = load_metadata(args.init_from).preprocess
    elif args.init_from is not None:  # so does a warm restart
        base_state = read_run_state(args.init_from)
        if "settings" in base_state:
            spec = TrainSettings.from_dict(base_state["settings"]).preprocess
    settings = TrainSettings(
        arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        group_loss_weight=args.group_loss_weight,
        class_weighting=args.class_weighting, mixup_alpha=args.mixup_alpha, seed=args.seed,
        optimizer=args.optimizer, freeze_batchnorm=args.freeze_batchnorm,
        average_from_epoch=args.average_from_epoch, precision=args.precision,
        preprocess=spec, augment=augment,
    )
    if args.average_from_epoch and args.freeze_batchnorm:
        raise DataError("--average-from-epoch measures the BatchNorm statistics of the averaged weights again, "
                        "which --freeze-batchnorm keeps as trained: use one of the two")
    if args.average_from_epoch < 0 or args.average_from_epoch > args.epochs:
        raise DataError(f"--average-from-epoch must be 0 (off) or an epoch of the run (1..{args.epochs}), "
                        f"got {args.average_from_epoch}")
    if not math.isfinite(args.group_loss_weight) or args.group_loss_weight < 0:
        raise DataError(f"--group-loss-weight must be 0 (off) or more, got {args.group_loss_weight:g}")
    if args.extra_repeat < 1:
        raise DataError(f"--extra-repeat must be at least 1, got {args.extra_repeat}")
    train_data = load_split(args.data, "train", spec)
    for extra in args.extra_train:
        train_data = with_extra_data(train_data, extra, spec, args.extra_held_out_share, args.extra_repeat)
    val_data = load_split(args.data, "val", spec)
    state = train(train_data, val_data, settings, args.out, resume=args.resume, command=args.command_line,
                  init_from=args.init_from)
    print(f"best val accuracy {state['best_val_accuracy']:.4f} at epoch {state['best_epoch']}; "
          f"checkpoint {args.out / 'best.keras'}")
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    from relaxd_train.export import ExportSettings

    d = ExportSettings(Path(), Path(), Path())
    p = sub.add_parser("export", help="convert a checkpoint to the chair's int8 .tflite + metadata JSON, checked on val")
    p.add_argument("--checkpoint", type=Path, required=True, help="RUN/best.keras (state.json beside it is read)")
    p.add_argument("--data", type=Path, required=True,
                   help="the training data set: val is evaluated, train calibrates the int8 ranges")
    p.add_argument("--out", type=Path, required=True, help="models/NAME.tflite (NAME.json is written beside it)")
    p.add_argument("--name", default=d.name, help="model name in the metadata (default: the file name)")
    p.add_argument("--version", default=d.version, help="model version (default: today's date)")
    p.add_argument("--crop-margin", type=float, default=d.crop_margin,
                   help="face-box margin the daemon crops with (default: the run's preprocess spec)")
    p.add_argument("--representative", type=int, default=d.representative, metavar="N",
                   help="training images (seeded sample) that calibrate the int8 ranges")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the calibration sample")
    p.add_argument("--tta-flip", action="store_true",
                   help="average the predictions on the face and its mirror image (doubles latency per face)")
    p.add_argument("--float", dest="float32", action="store_true", help="export float32 instead of int8")
    p.add_argument("--max-loss", type=float, default=d.max_drop_points, metavar="POINTS",
                   help="refuse the export if the file loses more 7-class accuracy points on val than this")
    p.add_argument("--latency-runs", type=int, default=d.latency_runs, help="timed invokes for the median latency")


def run_export(args: argparse.Namespace) -> int:
    from relaxd_train.export import ExportSettings, export, format_summary

    settings = ExportSettings(
        checkpoint=args.checkpoint, data=args.data, out=args.out, name=args.name, version=args.version,
        crop_margin=args.crop_margin, representative=args.representative, seed=args.seed,
        tta_flip=args.tta_flip, float32=args.float32, max_drop_points=args.max_loss,
        latency_runs=args.latency_runs,
    )
    meta = export(settings, command=args.command_line)
    print(format_summary(meta, args.out))
    return 0


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a .tflite on labelled images through the daemon's own code",
                       description="Evaluate a .tflite (with its .json) on a labelled data set: a FER2013 CSV, "
                                   "class folders, or split folders. Nothing is written unless --out-dir is given.")
    p.add_argument("--model", type=Path, required=True, help="the .tflite file (its .json beside it)")
    p.add_argument("--data", type=Path, required=True, help="FER2013 CSV, DIR/<class>/ or DIR/{train,val,test}/<class>/")
    p.add_argument("--split", choices=("train", "val", "test"), default="val",
                   help="which split of a CSV or split-folder data set (plain class folders are used whole)")
    p.add_argument("--detect-faces", action="store_true",
                   help="images are whole photos: find the face with the daemon's detector first "
                        "(a photo with no face found counts as wrong)")
    p.add_argument("--negative-weight", type=float, metavar="W",
                   help="decide with this negative weight instead of the model's (as affect.negative_weight)")
    p.add_argument("--held-out-share", type=float, metavar="SHARE",
                   help="only the subjects that `train --extra-held-out-share SHARE` kept out of training")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")
    p.add_argument("--out-dir", type=Path,
                   help="also write confusion.png and report.json here (default: write nothing)")


def run_evaluate(args: argparse.Namespace) -> int:
    from relaxd_train.evaluate import evaluate_model, format_report, write_outputs

    if args.negative_weight is not None and not 0.0 < args.negative_weight <= 10.0:
        raise RelaxdError(f"--negative-weight must be above 0 and at most 10, got {args.negative_weight:g}")
    if args.held_out_share is not None and not 0.0 < args.held_out_share < 1.0:
        raise RelaxdError(f"--held-out-share must be between 0 and 1, got {args.held_out_share:g}")
    options = dict(detect_faces=args.detect_faces, negative_weight=args.negative_weight,
                   held_out_share=args.held_out_share, command=args.command_line)
    if args.json:  # stdout carries the JSON only: anything a library prints goes to stderr
        with redirect_stdout(sys.stderr):
            report = evaluate_model(args.model, args.data, args.split, **options)
            if args.out_dir:
                write_outputs(report, args.out_dir)
        print(json.dumps(report))
        return 0
    report = evaluate_model(args.model, args.data, args.split, **options)
    print(format_report(report))
    for path in write_outputs(report, args.out_dir) if args.out_dir else []:
        print(f"wrote {path}")
    return 0


def add_decision_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decision", help="choose the model's negative weight on val and draw its trade-off PNG")
    p.add_argument("--model", type=Path, required=True, help="the exported .tflite (its .json is rewritten)")
    p.add_argument("--data", type=Path, required=True, help="data set whose val split is used")
    p.add_argument("--png", type=Path, help="trade-off plot (default: MODEL-tradeoff.png beside the model)")


def run_decision(args: argparse.Namespace) -> int:
    from relaxd_train.export import choose_negative_weight

    meta, png = choose_negative_weight(args.model, args.data, args.png)
    chosen = meta.decision
    point = next(p for p in chosen["sweep"] if p["weight"] == chosen["negative_weight"])
    print(f"negative weight {chosen['negative_weight']:g} ({chosen['rule']}): val 3-class "
          f"{100 * point['accuracy_3']:.1f}%, negative recall {100 * point['negative_recall']:.1f}%, "
          f"positive recall {100 * point['positive_recall']:.1f}%, neutral read as negative "
          f"{100 * point['calm_read_negative']:.1f}%; wrote {metadata_path(args.model)} and {png}")
    return 0


def add_saliency_parser(sub: argparse._SubParsersAction) -> None:
    from relaxd_train.saliency import METHODS, SaliencySettings

    d = SaliencySettings(Path(), Path(), Path())
    p = sub.add_parser("saliency", help="Grad-CAM / gradient heat maps per class as a PNG grid")
    p.add_argument("--checkpoint", type=Path, required=True, help="RUN/best.keras")
    p.add_argument("--data", type=Path, required=True, help="data set; its val split is used")
    p.add_argument("--out", type=Path, required=True, help="the grid .png, outside the project (it shows faces)")
    p.add_argument("--per-class", type=int, default=d.per_class, help="examples per class (columns)")
    p.add_argument("--method", choices=METHODS, default=d.method)
    p.add_argument("--split", choices=("train", "val", "test"), default=d.split)
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the example choice")


def run_saliency(args: argparse.Namespace) -> int:
    from relaxd_train.saliency import SaliencySettings, make_saliency_grid

    result = make_saliency_grid(SaliencySettings(
        checkpoint=args.checkpoint, data=args.data, out=args.out, per_class=args.per_class,
        method=args.method, split=args.split, seed=args.seed))
    bands = result["bands"]
    print(f"wrote {result['out']} ({result['images']} faces, Grad-CAM on layer {result['layer']})")
    print(f"Grad-CAM heat: eye band {100 * bands['eyes']:.0f}% (of {100 * bands['eyes_area']:.0f}% of the area), "
          f"mouth band {100 * bands['mouth']:.0f}% (of {100 * bands['mouth_area']:.0f}% of the area)")
    return 0


def add_finetune_parser(sub: argparse._SubParsersAction) -> None:
    from relaxd_train.finetune import FinetuneSettings

    d = FinetuneSettings(Path(), Path(), Path())
    p = sub.add_parser("finetune", help="transfer learning on your own photos: retrain the head, optionally unfreeze")
    p.add_argument("--checkpoint", type=Path, required=True, help="RUN/best.keras of a trained model")
    p.add_argument("--data", type=Path, required=True,
                   help="DIR/{train,val}/<class>/ or DIR/<class>/ (then a seeded --val-share is held out)")
    p.add_argument("--out", type=Path, required=True, help="new run directory (export takes OUT/best.keras)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs training the head with the features frozen")
    p.add_argument("--unfreeze-epochs", type=int, default=d.unfreeze_epochs,
                   help="further epochs with every layer but BatchNorm trainable, at --unfreeze-learning-rate")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--unfreeze-learning-rate", type=float, default=d.unfreeze_learning_rate)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--val-share", type=float, default=d.val_share, help="held out per class when DIR has no val/")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--detect-faces", action="store_true",
                   help="photos are whole pictures: crop the face with the daemon's detector (no face: skipped)")
    p.add_argument("--no-augment", action="store_true", help="switch the base run's augmentation off")


def run_finetune(args: argparse.Namespace) -> int:
    from relaxd_train.finetune import FinetuneSettings, finetune

    state = finetune(FinetuneSettings(
        checkpoint=args.checkpoint, data=args.data, out=args.out, epochs=args.epochs,
        unfreeze_epochs=args.unfreeze_epochs, learning_rate=args.learning_rate,
        unfreeze_learning_rate=args.unfreeze_learning_rate, batch_size=args.batch_size, val_share=args.val_share,
        seed=args.seed, detect_faces=args.detect_faces, augment=not args.no_augment), command=args.command_line)
    print(f"best val accuracy {state['best_val_accuracy']:.4f} at epoch {state['best_epoch']} "
          f"(before fine-tuning {state['finetune']['val_accuracy_before']:.4f}); checkpoint {args.out / 'best.keras'}")
    return 0


def add_info_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameter count and multiply-adds of an architecture")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), required=True)
    p.add_argument("--input-size", type=int, default=PreprocessSpec().input_size)
    p.add_argument("--classes", type=int, default=7)


def run_info(args: argparse.Namespace) -> int:
    from relaxd_train.architectures import build, multiply_adds

    PreprocessSpec(input_size=args.input_size)  # the same size check as training
    model = build(args.arch, args.input_size, args.classes)
    print(f"{args.arch} at {args.input_size}x{args.input_size}, {args.classes} classes: "
          f"{model.count_params():,} parameters, {multiply_adds(model):,} multiply-adds per face")
    return 0


def add_card_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="write the model card (Markdown) from a model's metadata")
    p.add_argument("--model", type=Path, required=True, help="the exported .tflite (its .json is read)")
    p.add_argument("--detect-report", type=Path, metavar="JSON",
                   help="an `evaluate --detect-faces --json` report to include (whole-pipeline figures)")
    p.add_argument("--report", type=Path, action="append", default=[], metavar="JSON",
                   help="an `evaluate --json` report on other data (e.g. CK+) to include; repeatable")
    p.add_argument("--out", type=Path, help="where to write the card (default: the model's path with .md)")


def run_card(args: argparse.Namespace) -> int:
    from relaxd.vision.model_meta import load_metadata, metadata_path
    from relaxd_train.card import render_card

    meta = load_metadata(args.model)
    report = json.loads(args.detect_report.read_text()) if args.detect_report else None
    out = args.out or args.model.with_suffix(".md")
    others = []
    for path in args.report:
        other = json.loads(path.read_text())
        others.append((other.get("command", f"evaluate ... > {path}"), other))
    pointer = args.model.parent / "DEFAULT"
    default = not pointer.is_file() or pointer.read_text().strip() == args.model.name
    out.write_text(render_card(meta, args.model.name, report, others, default), encoding="utf-8")
    print(f"wrote {out}")
    return 0


PARSERS = (add_train_parser, add_export_parser, add_evaluate_parser, add_decision_parser, add_saliency_parser,
           add_finetune_parser, add_info_parser, add_card_parser)
COMMANDS = {"train": run_train, "export": run_export, "evaluate": run_evaluate, "decision": run_decision,
            "saliency": run_saliency, "finetune": run_finetune, "info": run_info, "card": run_card}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train-and-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


NVIDIA_DEVICE = Path("/dev/nvidiactl")  # present wherever an NVIDIA driver is loaded


def quiet_cuda_probe() -> None:
    """On a machine without an NVIDIA driver, TensorFlow's first device query logs "failed call to
    cuInit" as an error; it is the expected answer there, so that query runs here, quietly, and any
    other line it prints still shows. With a driver, nothing is hidden: a CUDA error there is real."""
    if NVIDIA_DEVICE.exists():
        return
    try:
        with without_native_lines(b"failed call to cuInit"):
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
    except ImportError:  # the commands that need TensorFlow say how to install it
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["train-and-export", *argv])  # recorded in the model's metadata
    configure_logging("warning", "console")  # the daemon's log setup: stderr only, stdout stays ours
    try:
        quiet_cuda_probe()
        return COMMANDS[args.command](args)
    except (RelaxdError, FileExistsError, FileNotFoundError) as error:
        print(f"train-and-export: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
