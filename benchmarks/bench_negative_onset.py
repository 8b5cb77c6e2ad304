"""Negative onset to the first intensity reduction, on a replayed clip at 15 frames/s.

Issue 4's second measured target: <= 1 s from the first frame of a sustained negative
expression to the controller's first event that lowers the stimulation
(``intensity_lowered``, or ``adverse_reaction``, a halt that fades to off).

The clip is built in memory, never written anywhere: 640x480 frames at 15 frames/s, a FER2013
validation face (48x48) scaled up to 220 px on a mid-gray background, swaying a little, with
sensor noise, each face held for one second. First ~20 s of calm faces (neutral, happy), so
the session passes the controller's calibration (``calibration_s``, 15 s) and is running,
then sustained negative faces (sad, angry, fear). Every frame goes through the daemon's own
``VisionPipeline`` (Haar detector, TFLite classifier, ``AffectAggregator`` with the default
``AffectSettings``) and its reading through a ``Controller`` with the default
``ControllerSettings``, started for a ``ChildProfile`` at the first frame. Time is video
time (frame index / 15), so the result does not depend on how fast this machine is; the
processing time per frame, which a live chair adds once, is reported beside it.

Faces are chosen because *the model itself* reads them as the intended group with high
probability (``--min-prob``) and the detector finds them: at the centre and at each corner of
the sway, then in every frame of one-second holds at several points of the sway, through the
tracker as in the trials (the tracked box differs from a fresh detection by a few pixels, and
some faces read differently in it). So the benchmark measures the latency of detection +
aggregation + control, not the model's accuracy (the export's metrics do).

Each trial uses other faces and another onset point (the calm part lasts ``--calm-s`` plus
a random 0-1 s); the report gives the median and the maximum over the trials.
Run: ``.venv/bin/python benchmarks/bench_negative_onset.py [--trials N] [--model FILE] [--json]``.
If the FER2013 data is absent it says so and exits 0 ("skipped").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from relaxd.control import ChildProfile, Controller, EventKind, State, load_scenarios
from relaxd.errors import RelaxdError
from relaxd.logs import temporary_logging
from relaxd.settings import ClassifierSettings, ControllerSettings, Settings
from relaxd.vision.pipeline import StageTimer, VisionPipeline

FPS = 15.0
FRAME_W, FRAME_H = 640, 480
FACE_PX = 220  # the 48x48 face scaled up: about half the frame height, like a child in the chair
BACKGROUND = 128
NOISE_STD = 2.0
HOLD_FRAMES = 15  # each face image stays on screen for one second
CALM_LABELS = ("neutral", "happy")
CALM_GROUPS = ("neutral", "positive")
NEGATIVE_LABELS = ("sad", "angry", "fear")
NEGATIVE_GROUPS = ("negative",)
REACTIONS = (EventKind.INTENSITY_LOWERED, EventKind.ADVERSE_REACTION)
TARGET_S = 1.0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def default_data_dir() -> Path:
    """The workplace's FER2013 validation split, beside the repository."""
    return Path(__file__).resolve().parents[2] / "shared/data/fer2013/val"


class BenchmarkError(RelaxdError):
    """The benchmark cannot run as set up (too few usable faces)."""


# -- the clip -------------------------------------------------------------------------------------


SWAY_PX = (10, 6)
SWAY_CORNERS = tuple((sx * SWAY_PX[0], sy * SWAY_PX[1]) for sx in (-1, 1) for sy in (-1, 1))
"""Where a face is checked while screening, besides the centre: the corners of the sway."""

HOLD_STARTS_S = (0.0, 2.5, 5.0, 7.5)
"""Video times at which a face that passed the corners is played for a hold, tracked, while screening."""


def sway(now: float) -> tuple[int, int]:
    """A small, smooth head movement (pixels), so consecutive frames differ as in a camera."""
    return (int(round(SWAY_PX[0] * np.sin(2 * np.pi * 0.3 * now))),
            int(round(SWAY_PX[1] * np.sin(2 * np.pi * 0.2 * now + 1.0))))


def render(face: np.ndarray, offset: tuple[int, int], noise: np.random.Generator) -> np.ndarray:
    """One 640x480 BGR frame: the face scaled to FACE_PX on a mid-gray background, plus noise."""
    canvas = np.full((FRAME_H, FRAME_W), BACKGROUND, np.float32)
    big = cv2.resize(face, (FACE_PX, FACE_PX), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    x = (FRAME_W - FACE_PX) // 2 + offset[0]
    y = (FRAME_H - FACE_PX) // 2 + offset[1]
    canvas[y : y + FACE_PX, x : x + FACE_PX] = big
    canvas += noise.normal(0.0, NOISE_STD, canvas.shape).astype(np.float32)
    return cv2.cvtColor(np.clip(canvas, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


# -- choosing faces the model reads confidently ---------------------------------------------------


@dataclass(frozen=True)
class Face:
    name: str  # file name, for the report (never the image)
    label: str  # the data set's label
    image: np.ndarray  # 48x48 grayscale, in memory only
    read_as: str  # the model's argmax label on the rendered frame
    probability: float  # the model's probability of the intended groups


def screen(pipeline: VisionPipeline, data: Path, labels: tuple[str, ...], groups: tuple[str, ...],
           min_prob: float, limit: int, rng: np.random.Generator) -> tuple[list[Face], int]:
    """Faces (of up to ``limit`` per label, in random order) that are detected and read as ``groups``.

    Returns the accepted faces and how many images were screened.
    """
    meta = pipeline.classifier.metadata
    group_of = [meta.group_of(label) for label in meta.labels]
    noise = np.random.default_rng(0)

    def share_of(probabilities: np.ndarray) -> float:
        return float(sum(p for p, g in zip(probabilities, group_of) if g in groups))

    def confident(reading: Optional[tuple[int, np.ndarray]]) -> bool:
        return reading is not None and group_of[reading[0]] in groups and share_of(reading[1]) >= min_prob

    accepted: list[Face] = []
    screened = 0
    for label in labels:
        folder = data / label
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        for index in rng.permutation(len(files))[:limit]:
            path = files[index]
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if image is None:
                continue
            screened += 1
            centre = read_rendered(pipeline, image, (0, 0), noise)
            if (confident(centre)
                    and all(confident(read_rendered(pipeline, image, offset, noise)) for offset in SWAY_CORNERS)
                    and all(confident(reading) for reading in read_held(pipeline, image, noise))):
                top, probabilities = centre
                accepted.append(Face(path.name, label, image, meta.labels[top], share_of(probabilities)))
    pipeline.detector.reset()
    return accepted, screened


def read_rendered(pipeline: VisionPipeline, image: np.ndarray, offset: tuple[int, int],
                  noise: np.random.Generator) -> Optional[tuple[int, np.ndarray]]:
    """(argmax, probabilities) of a face rendered at ``offset``; None when no face is detected."""
    frame = render(image, offset, noise)
    pipeline.detector.reset()
    box = pipeline.detector.track(frame)
    if box is None:
        return None
    probabilities = pipeline.classifier.classify_face(frame, box)
    return int(np.argmax(probabilities)), probabilities


def read_held(pipeline: VisionPipeline, image: np.ndarray,
              noise: np.random.Generator) -> list[Optional[tuple[int, np.ndarray]]]:
    """(argmax, probabilities) of every frame of a hold at each of ``HOLD_STARTS_S``, through the tracker."""
    readings: list[Optional[tuple[int, np.ndarray]]] = []
    for start in HOLD_STARTS_S:
        pipeline.detector.reset()
        for frame in range(HOLD_FRAMES):
            rendered = render(image, sway(start + frame / FPS), noise)
            box = pipeline.detector.track(rendered)
            if box is None:
                return [None]
            probabilities = pipeline.classifier.classify_face(rendered, box)
            readings.append((int(np.argmax(probabilities)), probabilities))
    return readings


# -- one trial ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    onset_s: float
    reaction_s: Optional[float]  # None: no reduction within the negative part
    reaction: Optional[str]  # the event kind
    reason: str
    state_at_onset: str
    lowered_before_onset: bool  # a reduction while only calm faces were shown (a wrong reading)
    first_negative_reading_s: Optional[float]
    face_share: float  # frames in which the detector found the face
    calm_faces: tuple[str, ...]
    negative_faces: tuple[str, ...]

    @property
    def latency_s(self) -> Optional[float]:
        return None if self.reaction_s is None else self.reaction_s - self.onset_s

    @property
    def valid(self) -> bool:
        return self.state_at_onset == State.RUNNING.value and not self.lowered_before_onset

    def to_dict(self) -> dict:
        return {
            "onset_s": round(self.onset_s, 4),
            "reaction_s": None if self.reaction_s is None else round(self.reaction_s, 4),
            "latency_s": None if self.latency_s is None else round(self.latency_s, 4),
            "reaction": self.reaction,
            "reason": self.reason,
            "state_at_onset": self.state_at_onset,
            "lowered_before_onset": self.lowered_before_onset,
            "first_negative_reading_s": (None if self.first_negative_reading_s is None
                                         else round(self.first_negative_reading_s, 4)),
            "face_share": round(self.face_share, 4),
            "calm_faces": list(self.calm_faces),
            "negative_faces": list(self.negative_faces),
        }


def run_trial(pipeline: VisionPipeline, controller: Controller, calm: list[Face], negative: list[Face],
              onset_frame: int, negative_frames: int, seed: int) -> Trial:
    """Play calm faces up to ``onset_frame``, then negative ones; stop at the first reduction."""
    noise = np.random.default_rng(seed)
    pipeline.reset()
    controller.start(ChildProfile("bench-child"), None, 0.0)
    onset_s = onset_frame / FPS
    state_at_onset = ""
    lowered_early = False
    first_negative: Optional[float] = None
    face_frames = frames = 0
    for index in range(onset_frame + negative_frames):
        now = index / FPS
        if index < onset_frame:
            face = calm[(index // HOLD_FRAMES) % len(calm)]
        else:
            if index == onset_frame:
                state_at_onset = controller.state.value
            face = negative[((index - onset_frame) // HOLD_FRAMES) % len(negative)]
        result = pipeline.process(render(face.image, sway(now), noise), now, index)
        frames += 1
        face_frames += result.box is not None
        if index >= onset_frame and first_negative is None and result.reading.group == "negative":
            first_negative = now
        events = controller.on_reading(result.reading, now) + list(controller.tick(now).events)
        for event in events:
            if event.kind in REACTIONS:
                if index < onset_frame:
                    lowered_early = True
                else:
                    return Trial(onset_s, event.time, event.kind.value, event.reason, state_at_onset, lowered_early,
                                 first_negative, face_frames / frames, tuple(f.name for f in calm),
                                 tuple(f.name for f in negative))
    return Trial(onset_s, None, None, "no reduction", state_at_onset, lowered_early, first_negative,
                 face_frames / max(1, frames), tuple(f.name for f in calm), tuple(f.name for f in negative))


def pick(pool: list[Face], count: int, trial: int) -> list[Face]:
    """``count`` faces for this trial, rotating through the pool so trials differ where it allows."""
    return [pool[(trial * count + i) % len(pool)] for i in range(count)]


# -- reporting ------------------------------------------------------------------------------------


def summarise(trials: list[Trial], args: argparse.Namespace, pipeline: VisionPipeline, wall_s: float,
              calm_pool: list[Face], negative_pool: list[Face], screened: dict[str, int]) -> dict:
    latencies = [t.latency_s for t in trials if t.valid and t.latency_s is not None]
    all_reacted = len(latencies) == len(trials)
    kinds: dict[str, int] = {}
    for trial in trials:
        if trial.reaction:
            kinds[trial.reaction] = kinds.get(trial.reaction, 0) + 1
    frames = max(1, pipeline.timer.frames)
    return {
        "benchmark": "negative_onset",
        "skipped": False,
        "fps": FPS,
        "trials": len(trials),
        "valid_trials": sum(t.valid for t in trials),
        "reacted_trials": len(latencies),
        "latency_s": {
            "median": round(statistics.median(latencies), 4) if latencies else None,
            "max": round(max(latencies), 4) if latencies else None,
            "min": round(min(latencies), 4) if latencies else None,
        },
        "target_s": TARGET_S,
        "meets_target": bool(all_reacted and max(latencies) <= TARGET_S),
        "reactions": kinds,
        "processing_ms_per_frame": round(1000.0 * wall_s / frames, 2),
        "stage_ms": pipeline.timer.mean_ms(),
        "face_selection": {
            "min_prob": args.min_prob,
            "screened": screened,
            "calm_pool": len(calm_pool),
            "negative_pool": len(negative_pool),
            "calm_read_as": dict(Counter(face.read_as for face in calm_pool)),
            "negative_read_as": dict(Counter(face.read_as for face in negative_pool)),
            "calm_per_trial": args.calm_faces,
            "negative_per_trial": args.negative_faces,
        },
        "model": str(pipeline.classifier.model_path),
        "data": str(args.data),
        "per_trial": [t.to_dict() for t in trials],
        "note": ("faces are chosen because the model itself reads them as the intended group with probability "
                 f">= {args.min_prob}: this measures detection + aggregation + control latency on video time, "
                 "not model accuracy; a live chair adds one frame's processing time"),
    }


def print_report(result: dict) -> None:
    lat = result["latency_s"]
    print(f"negative onset -> first intensity reduction, {result['trials']} trials at {result['fps']:g} frames/s "
          f"(video time), {result['valid_trials']} valid, {result['reacted_trials']} reacted")
    for i, trial in enumerate(result["per_trial"]):
        latency = "none" if trial["latency_s"] is None else f"{trial['latency_s']:.3f} s"
        print(f"  trial {i:2d}: onset {trial['onset_s']:6.2f} s, {latency} ({trial['reaction']}), "
              f"state at onset {trial['state_at_onset']}, face in {100 * trial['face_share']:.0f}% of frames"
              + (", LOWERED BEFORE ONSET" if trial["lowered_before_onset"] else ""))
    if lat["median"] is not None:
        print(f"  median {lat['median']:.3f} s, max {lat['max']:.3f} s, min {lat['min']:.3f} s "
              f"(target <= {result['target_s']:g} s: {'met' if result['meets_target'] else 'NOT met'})")
    print(f"  processing {result['processing_ms_per_frame']} ms per frame on this machine; "
          f"reactions {result['reactions']}")
    sel = result["face_selection"]
    print(f"  faces: {sel['calm_pool']} calm {sel['calm_read_as']} and {sel['negative_pool']} negative "
          f"{sel['negative_read_as']} usable of {sel['screened']} screened; model {result['model']}")
    print(f"  note: {result['note']}")


def warnings_to_stderr():
    """Warnings and errors to stderr (stdout carries the report); the old logging is restored after."""
    return temporary_logging("warning", "console", stream=sys.stderr)


def run(args: argparse.Namespace) -> dict:
    if not all((args.data / label).is_dir() for label in CALM_LABELS + NEGATIVE_LABELS):
        return {"benchmark": "negative_onset", "skipped": True,
                "reason": f"FER2013 validation faces not found in {args.data} (need the folders "
                          f"{', '.join(CALM_LABELS + NEGATIVE_LABELS)}); pass --data DIR"}
    cv2.setNumThreads(1)
    settings = Settings(classifier=ClassifierSettings(model=str(args.model or ""), threads=1))
    pipeline = VisionPipeline.from_settings(settings)
    rng = np.random.default_rng(args.seed)
    calm_pool, calm_screened = screen(pipeline, args.data, CALM_LABELS, CALM_GROUPS, args.min_prob, args.screen, rng)
    negative_pool, negative_screened = screen(pipeline, args.data, NEGATIVE_LABELS, NEGATIVE_GROUPS,
                                              args.min_prob, args.screen, rng)
    if not calm_pool or not negative_pool:
        raise BenchmarkError(
            f"the model read {len(calm_pool)} of {calm_screened} calm and {len(negative_pool)} of "
            f"{negative_screened} negative faces as intended with probability >= {args.min_prob}: "
            "lower --min-prob, raise --screen, or use a better model (--model)"
        )
    scenarios = load_scenarios(None)
    pipeline.timer = StageTimer()  # time the trials only, not the screening
    trials = []
    started = time.perf_counter()
    for trial in range(args.trials):
        calm_s = args.calm_s + float(rng.uniform(0.0, 1.0))
        controller = Controller(ControllerSettings(), scenarios)
        trials.append(run_trial(pipeline, controller, pick(calm_pool, args.calm_faces, trial),
                                pick(negative_pool, args.negative_faces, trial), int(round(calm_s * FPS)),
                                int(round(args.negative_s * FPS)), seed=args.seed * 1000 + trial))
    wall_s = time.perf_counter() - started
    screened = {"calm": calm_screened, "negative": negative_screened}
    return summarise(trials, args, pipeline, wall_s, calm_pool, negative_pool, screened)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(),
                        help="FER2013 val folder with one subfolder per class (default: %(default)s)")
    parser.add_argument("--model", type=Path, help="a .tflite with its .json (default: the shipped model)")
    parser.add_argument("--trials", type=int, default=10, help="onset points / face sets (default 10)")
    parser.add_argument("--calm-s", type=float, default=20.0,
                        help="calm faces before the onset, plus a random 0-1 s (default 20; calibration takes 15)")
    parser.add_argument("--negative-s", type=float, default=5.0, help="longest negative part to wait for a reaction")
    parser.add_argument("--calm-faces", type=int, default=4, help="calm faces per trial, each shown 1 s in turn")
    parser.add_argument("--negative-faces", type=int, default=3,
                        help="negative faces per trial, each shown 1 s in turn")
    parser.add_argument("--min-prob", type=float, default=0.8,
                        help="a face is used only if the model gives its intended group at least this probability")
    parser.add_argument("--screen", type=int, default=150, help="images screened per class (default 150)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    for name in ("trials", "calm_faces", "negative_faces", "screen"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0.0 <= args.min_prob <= 1.0:
        parser.error("--min-prob must lie in 0..1")

    with warnings_to_stderr():
        try:
            result = run(args)
        except RelaxdError as error:
            print(f"bench_negative_onset: {error}" + (
                "\n(until models/DEFAULT exists, pass --model FILE)" if "default model" in str(error) else ""),
                file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(result))
    elif result["skipped"]:
        print(f"skipped: {result['reason']}")
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
