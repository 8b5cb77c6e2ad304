"""Viola-Jones face detection and the demo clip, with real OpenCV on real images.

The face is scikit-image's public-domain ``astronaut`` photo (OpenCV's frontal
cascade puts her face at about (177, 66, 95, 95) in the 512x512 image) and the
synthetic demo clip made from it, whose ground truth ``relaxd.demo`` knows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from relaxd import demo
from relaxd.errors import DetectorError, RelaxdError
from relaxd.settings import DetectorSettings
from relaxd.vision import detector as detector_module
from relaxd.vision.detector import FaceDetector, cascade_candidates, clip_box, pick_face

skimage_data = pytest.importorskip("skimage.data")

FACE = (177, 66, 95, 95)  # the astronaut's face in her 512x512 photo


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(DetectorSettings())


def centre(box):
    return box[0] + box[2] / 2.0, box[1] + box[3] / 2.0


def iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def noise_and_gradient(height: int = 480, width: int = 640) -> np.ndarray:
    rng = np.random.default_rng(5)
    ramp = np.linspace(40, 210, width, dtype=np.float32)[np.newaxis, :, np.newaxis]
    image = ramp + rng.normal(0, 20, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


# -- photos ------------------------------------------------------------------------------


def test_finds_the_astronaut_face(detector, astronaut):
    boxes = detector.detect_all(astronaut)
    assert len(boxes) == 1
    best = detector.find_best(astronaut)
    assert best == boxes[0]
    assert iou(best, FACE) > 0.7
    cx, cy = centre(best)
    assert 200 < cx < 250 and 90 < cy < 140  # between her eyes and mouth
    assert 70 <= best[2] <= 130


def test_grayscale_input_gives_the_same_face(detector, astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    assert detector.find_best(gray) == detector.find_best(astronaut)


@pytest.mark.parametrize("side", [2048, 4000])
def test_a_large_photo_is_scanned_at_camera_size(detector, astronaut, side):
    """A phone-sized photo: at full resolution the cascade adds a spurious face bigger than hers."""
    photo = cv2.resize(astronaut, (side, side), interpolation=cv2.INTER_CUBIC)
    expected = tuple(round(v * side / 512) for v in FACE)
    boxes = detector.detect_all(photo)
    assert len(boxes) == 1 and iou(boxes[0], expected) > 0.8
    assert iou(detector.find_best(photo), expected) > 0.8


@pytest.mark.parametrize("side", [80, 48, 300])
def test_a_face_that_fills_the_photo_is_found(detector, astronaut, side):
    """A tight crop inside the face: no context around it, so only the border retry finds it."""
    crop = cv2.resize(astronaut[75:155, 185:265], (side, side), interpolation=cv2.INTER_AREA)
    assert detector.detect_all(crop) == []  # why the retry exists
    box = detector.find_best(crop)
    assert box is not None
    assert clip_box(box, crop.shape) == box  # inside the image
    assert box[2] >= 0.6 * side and box[3] >= 0.6 * side


def test_a_blurred_filling_face_is_found_by_the_lenient_last_scan(detector, astronaut, monkeypatch):
    """A soft, tight, FER-sized face (like many FER2013 photos) that the strict scans miss."""
    crop = cv2.resize(cv2.GaussianBlur(astronaut[64:144, 186:266], (0, 0), 3), (48, 48), interpolation=cv2.INTER_AREA)
    box = detector.find_best(crop)
    assert box is not None and box[2] >= 0.5 * 48 and 12 <= centre(box)[0] <= 36
    monkeypatch.setattr(detector_module, "LENIENT_NEIGHBORS", DetectorSettings().min_neighbors)
    assert FaceDetector(DetectorSettings()).find_best(crop) is None  # why the lenient scan exists


@pytest.fixture(scope="module")
def tilted_face(astronaut) -> np.ndarray:
    """Her face tilted by 25 degrees in a 96x96 photo: the default cascade misses it, alt2 does not."""
    turn = cv2.getRotationMatrix2D((225, 113), 25, 1.0)
    tilted = cv2.warpAffine(astronaut, turn, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    return cv2.resize(tilted[40:180, 160:300], (96, 96), interpolation=cv2.INTER_AREA)


def test_the_photo_fallback_cascade_finds_a_face_the_default_misses(tilted_face, monkeypatch):
    box = FaceDetector(DetectorSettings()).find_best(tilted_face)
    assert box is not None and 30 <= centre(box)[0] <= 55 and 40 <= centre(box)[1] <= 65 and box[2] >= 40
    # Without it (an install that lacks alt2) the photo has no face, and nothing else breaks:
    monkeypatch.setattr(detector_module, "PHOTO_FALLBACK_CASCADE_NAME", "no_such_cascade.xml")
    lookups = []
    real_loader = detector_module.load_photo_fallback
    monkeypatch.setattr(detector_module, "load_photo_fallback", lambda: lookups.append(1) or real_loader())
    default_only = FaceDetector(DetectorSettings())
    assert real_loader() is None
    assert default_only.find_best(tilted_face) is None
    assert default_only.find_best(tilted_face) is None
    assert len(lookups) == 1  # the missing file is looked for once, not per photo


def test_camera_frames_never_use_the_photo_fallback(tilted_face, monkeypatch):
    def refuse():
        raise AssertionError("track() loaded the photo fallback cascade")

    monkeypatch.setattr(detector_module, "load_photo_fallback", refuse)
    detector = FaceDetector(DetectorSettings())
    frame = cv2.resize(tilted_face, (640, 480))
    for _ in range(3):
        detector.track(frame)


def test_a_small_crop_with_context_is_upscaled_and_found(detector, astronaut):
    crop = cv2.resize(astronaut[55:175, 165:285], (48, 48), interpolation=cv2.INTER_AREA)  # FER-sized
    boxes = detector.detect_all(crop)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert 25 <= w <= 45 and 0 <= x and x + w <= 48 and 0 <= y and y + h <= 48


def test_no_face_in_noise_and_gradient(detector):
    image = noise_and_gradient()
    assert detector.detect_all(image) == []
    assert detector.find_best(image) is None
    assert FaceDetector(DetectorSettings()).track(image) is None


@pytest.fixture(scope="module")
def two_faces(astronaut) -> tuple[np.ndarray, tuple, tuple]:
    """A large face at the left and a smaller one in the middle of a gray 960x480 frame."""
    head = astronaut[10:230, 120:340]
    canvas = np.full((480, 960, 3), 120, np.uint8)
    canvas[20:320, 20:320] = cv2.resize(head, (300, 300), interpolation=cv2.INTER_AREA)
    canvas[155:325, 395:565] = cv2.resize(head, (170, 170), interpolation=cv2.INTER_AREA)
    return canvas, (20, 20, 300, 300), (395, 155, 170, 170)


@pytest.mark.parametrize("pick", ["largest", "central"])
def test_pick_largest_or_central(two_faces, pick):
    canvas, large, middle = two_faces
    detector = FaceDetector(DetectorSettings(pick=pick))
    assert len(detector.detect_all(canvas)) == 2
    expected = large if pick == "largest" else middle
    for box in (detector.find_best(canvas), detector.track(canvas)):
        cx, cy = centre(box)
        assert expected[0] < cx < expected[0] + expected[2] and expected[1] < cy < expected[1] + expected[3]


def test_a_region_leaves_out_a_face_beside_it_in_camera_frames(two_faces):
    """The larger face at the left (a caregiver leaning in) is ignored when the region excludes it."""
    canvas, large, middle = two_faces
    detector = FaceDetector(DetectorSettings(region_left=0.35))  # the large face's centre is at 0.18
    for _ in range(20):  # tracking, full rescans and all
        cx, cy = centre(detector.track(canvas))
        assert middle[0] < cx < middle[0] + middle[2] and middle[1] < cy < middle[1] + middle[3]
    assert FaceDetector(DetectorSettings(region_left=0.7)).track(canvas) is None, "no face inside: none"


@pytest.mark.parametrize("bounds, named", [({"region_left": 0.6, "region_right": 0.4}, "detector.region_left"),
                                           ({"region_top": 0.5, "region_bottom": 0.5}, "detector.region_top")])
def test_an_empty_region_is_refused_with_the_keys_named(bounds, named):
    with pytest.raises(DetectorError, match=f"{named}: .* must be below"):
        FaceDetector(DetectorSettings(**bounds))


def test_pick_face_rules():
    boxes = [(0, 0, 50, 50), (300, 220, 30, 30)]
    assert pick_face(boxes, (480, 640), "largest") == (0, 0, 50, 50)
    assert pick_face(boxes, (480, 640), "central") == (300, 220, 30, 30)
    assert pick_face([], (480, 640), "largest") is None


# -- the cascade ---------------------------------------------------------------------------


def test_configured_cascade_not_found_names_the_path(tmp_path):
    missing = tmp_path / "no_such_cascade.xml"
    with pytest.raises(DetectorError, match="no_such_cascade.xml \\(not found\\).*detector.cascade"):
        FaceDetector(DetectorSettings(cascade=str(missing)))


@pytest.mark.parametrize(
    "content",
    ["not xml at all", '<?xml version="1.0"?>\n<opencv_storage><size>3</size></opencv_storage>\n'],
)
def test_invalid_cascade_file_is_refused(tmp_path, content):
    broken = tmp_path / "broken.xml"
    broken.write_text(content, encoding="utf-8")
    with pytest.raises(DetectorError, match="broken.xml \\(not a valid cascade XML\\)"):
        FaceDetector(DetectorSettings(cascade=str(broken)))


def test_default_cascade_search_order_and_error(tmp_path, monkeypatch):
    candidates = cascade_candidates("")
    assert candidates[0] == Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    assert Path("/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml") in candidates
    # An OpenCV without its XML files, on a system without opencv-data:
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path / "cv2-data") + "/")
    monkeypatch.setattr(detector_module, "SYSTEM_CASCADE_DIRS", (tmp_path / "system",))
    with pytest.raises(DetectorError) as error:
        FaceDetector(DetectorSettings())
    message = str(error.value)
    assert str(tmp_path / "cv2-data" / "haarcascade_frontalface_default.xml") in message
    assert str(tmp_path / "system" / "haarcascade_frontalface_default.xml") in message
    assert "opencv-python-headless<5" in message


# -- the demo clip and tracking ------------------------------------------------------------

SECONDS, FPS = 6.0, 10.0  # a short clip: the same scenes as the default, moving faster


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    path = demo.make_demo_clip(tmp_path_factory.mktemp("clip") / "demo.avi", seconds=SECONDS, fps=FPS)
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return path, frames


def test_demo_clip_is_a_readable_640x480_video(clip):
    path, frames = clip
    assert path.suffix == ".avi"
    assert len(frames) == int(SECONDS * FPS)
    assert frames[0].shape == (480, 640, 3)
    capture = cv2.VideoCapture(str(path))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    capture.release()


def test_demo_clip_is_deterministic_per_seed():
    first = list(demo.render_frames(seconds=0.4, fps=10, seed=7))
    again = list(demo.render_frames(seconds=0.4, fps=10, seed=7))
    other = list(demo.render_frames(seconds=0.4, fps=10, seed=8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])


def test_demo_clip_scenes(clip):
    """She moves, comes close enough to fill most of the frame, and leaves for about a second."""
    truth = demo.expected_faces(SECONDS, FPS)
    present = [box for box in truth if box is not None]
    assert max(box[3] for box in present) >= 0.75 * 480
    assert min(box[3] for box in present) <= 0.2 * 480
    assert max(centre(box)[0] for box in present) - min(centre(box)[0] for box in present) > 200
    away = [index for index, box in enumerate(truth) if box is None]
    assert FPS * 0.9 <= len(away) <= FPS * 2.0


def test_ensure_demo_clip_generates_once(tmp_path, monkeypatch):
    calls = []
    real = demo.make_demo_clip

    def counting(path, **kwargs):
        calls.append(path)
        return real(path, seconds=0.2, fps=10)  # keep the test quick

    monkeypatch.setattr(demo, "make_demo_clip", counting)
    first = demo.ensure_demo_clip(tmp_path / "cache")
    second = demo.ensure_demo_clip(tmp_path / "cache")
    assert first == second and first.is_file() and first.stat().st_size > 0
    assert len(calls) == 1
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary left behind


def test_demo_without_scikit_image_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(RelaxdError, match=r"pip install relaxd\[demo\]"):
        demo.make_demo_clip(tmp_path / "demo.avi", seconds=0.2)
    assert not (tmp_path / "demo.avi").exists()


def test_demo_clip_as_mp4_and_a_bad_suffix(tmp_path):
    path = demo.make_demo_clip(tmp_path / "demo.mp4", seconds=0.3, fps=10)
    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (480, 640, 3)
    with pytest.raises(RelaxdError, match=r"\.avi \(MJPG\) or \.mp4"):
        demo.make_demo_clip(tmp_path / "demo.mkv", seconds=0.3)


def test_tracker_finds_the_face_wherever_the_full_scan_does(clip, detector):
    _, frames = clip
    truth = demo.expected_faces(SECONDS, FPS)
    tracker = FaceDetector(DetectorSettings())
    tracked = [tracker.track(frame) for frame in frames]
    full = [detector.detect_all(frame) for frame in frames]

    found = [i for i, boxes in enumerate(full) if boxes]
    assert len(found) >= 0.7 * len(frames)
    kept = [i for i in found if tracked[i] is not None and max(iou(tracked[i], b) for b in full[i]) > 0.5]
    assert len(kept) >= 0.95 * len(found)
    # It follows her: every tracked box sits on her face, and none appears while she is away.
    for box, expected in zip(tracked, truth):
        if expected is None:
            assert box is None
        elif box is not None:
            dx, dy = np.subtract(centre(box), centre(expected))
            assert np.hypot(dx, dy) < 0.15 * expected[2]
    # Including when she is so close that her face fills most of the frame.
    closest = max(range(len(truth)), key=lambda i: truth[i][3] if truth[i] else 0)
    assert tracked[closest] is not None and tracked[closest][3] >= 0.6 * 480


def test_tracker_finds_a_face_filling_the_frame(astronaut):
    """Closer still: no context around the face at all, found through the border retry."""
    frame = cv2.resize(astronaut[75:155, 170:280], (640, 480), interpolation=cv2.INTER_LINEAR)
    tracker = FaceDetector(DetectorSettings())
    assert tracker.detect_all(frame) == []
    first = tracker.track(frame)
    assert first is not None and first[3] >= 0.6 * 480
    assert tracker.track(frame) is not None  # and keeps it


def test_reset_forgets_the_track(clip):
    _, frames = clip
    tracker = FaceDetector(DetectorSettings())
    for frame in frames[:10]:
        tracker.track(frame)
    tracker.reset()
    fresh = FaceDetector(DetectorSettings())
    later = frames[30:36]
    assert [tracker.track(f) for f in later] == [fresh.track(f) for f in later]


def test_tracker_copes_with_a_change_of_frame_size(astronaut):
    tracker = FaceDetector(DetectorSettings())
    assert iou(tracker.track(astronaut), FACE) > 0.6
    half = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    box = tracker.track(half)
    assert box is not None and iou(box, tuple(v // 2 for v in FACE)) > 0.6


# -- the fast path (issue 16) --------------------------------------------------------------


def test_a_tracked_face_is_confirmed_by_its_picture_and_lost_at_once_when_it_goes(clip, astronaut):
    _, frames = clip
    tracker = FaceDetector(DetectorSettings())
    every_frame = FaceDetector(DetectorSettings(cascade_interval=1))
    pairs = [(tracker.track(f), every_frame.track(f)) for f in frames]
    assert tracker.counts.confirmed > tracker.counts.cascade, "the picture, not the cascade, follows her"
    both = [(a, b) for a, b in pairs if a is not None and b is not None]
    assert len(both) >= 0.95 * sum(b is not None for _, b in pairs)
    assert np.mean([iou(a, b) for a, b in both]) > 0.8
    # A face that vanishes between cascade runs is not kept on the background by its picture.
    frame = cv2.copyMakeBorder(astronaut, 0, 0, 64, 64, cv2.BORDER_REPLICATE)
    fresh = FaceDetector(DetectorSettings())
    assert fresh.track(frame) is not None and fresh.track(frame) is not None
    assert fresh.counts.confirmed == 1
    empty = frame.copy()
    empty[40:200, 200:340] = 128
    assert fresh.track(empty) is None


def test_an_unchanged_empty_view_is_not_scanned_again_but_a_face_arriving_is_found_at_once(astronaut):
    settings = DetectorSettings(full_scan_interval=10)
    tracker = FaceDetector(settings)
    empty = noise_and_gradient(512, 512)
    for _ in range(5):
        assert tracker.track(empty) is None
    assert tracker.counts.skipped == 4 and tracker.counts.cascade == 1
    for _ in range(10):
        tracker.track(empty)
    assert tracker.counts.cascade == 2, "an unchanged view is still rescanned every full_scan_interval frames"
    assert iou(tracker.track(astronaut), FACE) > 0.6


def test_a_cameras_small_grey_copy_gives_the_same_face(astronaut):
    frame = cv2.resize(astronaut, (640, 640))
    expected = FaceDetector(DetectorSettings()).track(frame)
    small = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (320, 320), interpolation=cv2.INTER_AREA)
    assert FaceDetector(DetectorSettings()).track(frame, small) == expected
    other = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (256, 256), interpolation=cv2.INTER_AREA)
    assert iou(FaceDetector(DetectorSettings()).track(frame, other), expected) > 0.8
