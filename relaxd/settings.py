"""Typed settings: one frozen dataclass per config section.

This module only *declares* the settings: names, types, defaults, allowed ranges
(``field(metadata={"range": (low, high)})``) and choices (``metadata={"choices": ...}``).
``relaxd.config`` reads the YAML file into these classes and validates it against
exactly these declarations, so adding a setting is adding one field here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def ranged(default, low, high, doc: str = ""):
    """A numeric setting that must lie in ``[low, high]``."""
    return field(default=default, metadata={"range": (low, high), "doc": doc})


def choice(default, choices: tuple[str, ...], doc: str = ""):
    """A string setting that must be one of ``choices``."""
    return field(default=default, metadata={"choices": choices, "doc": doc})


def text(default: str, doc: str = ""):
    return field(default=default, metadata={"doc": doc})


def labels(doc: str = ""):
    """A list of model label names (empty by default)."""
    return field(default=(), metadata={"doc": doc})


@dataclass(frozen=True)
class CameraSettings:
    source: str = text("demo", "picamera | usb:N (V4L2 index) | a video file path | rtsp/http URL | demo")
    width: int = ranged(640, 64, 4096, "requested frame width in pixels")
    height: int = ranged(480, 48, 4096, "requested frame height in pixels")
    fps: float = ranged(30.0, 1.0, 120.0, "requested camera frame rate")
    realtime: bool = field(default=True, metadata={"doc": "play a video file at its own frame rate (simulated live camera)"})
    loop: bool = field(default=True, metadata={"doc": "restart a video file at its end (simulation only)"})
    stall_timeout_s: float = ranged(2.0, 0.1, 60.0, "no new frame for this long = camera stalled")
    reconnect_initial_s: float = ranged(0.5, 0.05, 60.0, "first wait before reopening a lost camera")
    reconnect_max_s: float = ranged(10.0, 0.1, 600.0, "longest wait between reopen attempts (back-off cap)")


@dataclass(frozen=True)
class DetectorSettings:
    cascade: str = text("", "Haar cascade XML; empty = OpenCV's haarcascade_frontalface_default.xml")
    scale_factor: float = ranged(1.1, 1.01, 2.0, "detectMultiScale scaleFactor")
    min_neighbors: int = ranged(5, 1, 20, "detectMultiScale minNeighbors")
    min_face_fraction: float = ranged(0.1, 0.02, 1.0, "smallest face, as a fraction of the frame height")
    detect_width: int = ranged(320, 80, 4096, "frames are downscaled to this width for detection")
    roi_margin: float = ranged(0.6, 0.1, 3.0, "search window around the last face, grown by this fraction")
    full_scan_interval: int = ranged(30, 1, 1000, "rescan the whole frame every N frames while tracking")
    cascade_interval: int = ranged(10, 1, 1000, "between cascade runs a tracked face is confirmed by template "
                                   "matching; run the cascade around it at least every N frames (1: every frame)")
    pick: str = choice("largest", ("largest", "central"), "which face is the child's when several are found")
    region_left: float = ranged(0.0, 0.0, 1.0, "camera frames: only a face whose centre lies right of this "
                                "fraction of the width counts (e.g. to leave out a caregiver at the side)")
    region_right: float = ranged(1.0, 0.0, 1.0, "camera frames: ... left of this fraction of the width")
    region_top: float = ranged(0.0, 0.0, 1.0, "camera frames: ... below this fraction of the height")
    region_bottom: float = ranged(1.0, 0.0, 1.0, "camera frames: ... above this fraction of the height")

    def problems(self) -> list[tuple[str, str]]:
        """Rules across fields, as (key, message); ``relaxd.config`` reports them like range errors."""
        return [(low, f"{getattr(self, low):g} must be below {high} ({getattr(self, high):g}): the region "
                      "would be empty (fractions of the frame, 0 to 1)")
                for low, high in (("region_left", "region_right"), ("region_top", "region_bottom"))
                if getattr(self, low) >= getattr(self, high)]


@dataclass(frozen=True)
class ClassifierSettings:
    model: str = text("", "path to the .tflite model (its .json metadata beside it); empty = the shipped default")
    threads: int = ranged(1, 1, 8, "TFLite interpreter threads")


@dataclass(frozen=True)
class AffectSettings:
    method: str = choice("threshold", ("threshold", "majority", "ema"),
                         "threshold: Yang, Lee & Park's rule; majority: most frequent label; ema: smoothed probabilities")
    window_frames: int = ranged(15, 1, 600, "sliding window length in frames")
    threshold: float = ranged(0.15, 0.0, 1.0, "threshold rule: share of window frames a non-neutral label needs")
    ema_alpha: float = ranged(0.3, 0.01, 1.0, "ema: weight of the newest frame")
    min_face_share: float = ranged(0.5, 0.0, 1.0, "fewer face frames than this share of the window = no face")
    negative_weight: float = ranged(0.0, 0.0, 10.0, "each frame is negative when this weight times P(negative) "
                                    "beats P(neutral) and P(positive): a missed negative costs more than a false "
                                    "one; 0 = the weight the model was shipped with (chosen on FER2013 val)")
    negative_labels: tuple[str, ...] = labels("the model's labels that count as negative; all three lists "
                                              "empty = the model's grouping (surprise is negative)")
    neutral_labels: tuple[str, ...] = labels("... that count as neutral")
    positive_labels: tuple[str, ...] = labels("... that count as positive")

    def groups(self) -> dict[str, tuple[str, ...]] | None:
        """The configured grouping, or None to keep the model's."""
        if not (self.negative_labels or self.neutral_labels or self.positive_labels):
            return None
        return {"negative": self.negative_labels, "neutral": self.neutral_labels, "positive": self.positive_labels}

    def problems(self) -> list[tuple[str, str]]:
        if self.groups() is None:
            return []
        found: list[tuple[str, str]] = []
        seen: dict[str, str] = {}
        for key in ("negative_labels", "neutral_labels", "positive_labels"):
            if not getattr(self, key):
                found.append((key, "empty while another of negative_labels, neutral_labels, positive_labels is "
                                   "set: give all three (every label of the model in exactly one), or none"))
            for label in getattr(self, key):
                if label in seen:
                    found.append((key, f"{label!r} is also in {seen[label]}: put each label in one group"))
                seen[label] = key
        return found


@dataclass(frozen=True)
class LoggingSettings:
    level: str = choice("info", ("debug", "info", "warning", "error"), "least severe message that is logged")
    format: str = choice("auto", ("auto", "json", "console"),
                         "auto: readable on a terminal, JSON lines otherwise (journald)")


@dataclass(frozen=True)
class SafetySettings:
    estop_pin: int = ranged(-1, -1, 27, "BCM GPIO of the normally-closed e-stop contact (to GND, internal "
                            "pull-up; open circuit = stop); -1 = no button (simulation only)")
    watchdog_deadline_s: float = ranged(0.5, 0.05, 10.0, "the control loop must run at least this often, "
                                        "else every output goes off")


@dataclass(frozen=True)
class AlertSettings:
    relay_pin: int = ranged(-1, -1, 27, "BCM GPIO of the buzzer / nurse-call relay; -1 = no relay")
    relay_active_high: bool = field(default=True, metadata={"doc": "false for relay boards that switch on a low input"})
    relay_min_priority: str = choice("medium", ("high", "medium", "low"),
                                     "the relay is on while an unacknowledged alert of this priority or higher exists")
    relay_pulse_s: float = ranged(0.0, 0.0, 10.0, "0 = relay steadily on; above 0 = on/off with this half-period (buzzer)")
    webhook_url: str = text("", "http(s) URL that receives each alert and acknowledgement as a JSON POST; empty = none")
    webhook_timeout_s: float = ranged(5.0, 0.5, 60.0, "wait this long for the webhook's answer")
    webhook_retry_initial_s: float = ranged(1.0, 0.01, 600.0, "first wait before resending a failed webhook message")
    webhook_retry_max_s: float = ranged(300.0, 0.01, 3600.0, "longest wait between resends (exponential back-off cap)")


MQTT_COMMANDS = ("estop", "ack", "pause", "stop", "resume", "start")
MQTT_SAFE_COMMANDS = ("estop", "ack")  # neither starts nor raises stimulation


@dataclass(frozen=True)
class MqttSettings:
    """A centre's broker (relaxd.mqtt): state, health and alerts out, e-stop and acknowledge in."""

    enabled: bool = field(default=False, metadata={"doc": "publish to an MQTT broker (needs pip install 'relaxd[mqtt]')"})
    host: str = text("localhost", "the broker's host name or address")
    port: int = ranged(1883, 1, 65535, "the broker's port (8883 is usual with TLS)")
    username: str = text("", "broker user name; empty = anonymous")
    password_file: str = text("", "a file holding the broker password (kept out of this config); empty = none")
    tls: bool = field(default=False, metadata={"doc": "connect with TLS"})
    ca_file: str = text("", "TLS: the CA certificate that signed the broker's; empty = the system's CAs")
    cert_file: str = text("", "TLS: this chair's client certificate (optional)")
    key_file: str = text("", "TLS: the client certificate's private key")
    topic_prefix: str = text("relaxd", "topics are <topic_prefix>/<chair_id>/...")
    chair_id: str = text("", "this chair's name in topics and Home Assistant; empty = the host name")
    discovery: bool = field(default=True, metadata={"doc": "announce the chair to Home Assistant (MQTT discovery)"})
    discovery_prefix: str = text("homeassistant", "Home Assistant's discovery prefix")
    state_interval_s: float = ranged(1.0, 0.2, 60.0, "publish state and health at most this often (and on change)")
    keepalive_s: int = ranged(30, 5, 600, "MQTT keep-alive; the broker announces 'offline' about 1.5x this after a death")
    retry_initial_s: float = ranged(1.0, 0.05, 60.0, "first wait before reconnecting or resending an alert")
    retry_max_s: float = ranged(60.0, 0.1, 3600.0, "longest wait between reconnects and resends")
    session_summary: bool = field(default=False, metadata={"doc": "publish a summary (pseudonym only) when a session ends"})
    commands: tuple[str, ...] = field(default=MQTT_SAFE_COMMANDS, metadata={
        "doc": f"commands accepted from MQTT, of {', '.join(MQTT_COMMANDS)}; only estop and ack are safe, "
               "the others (start, resume) must be enabled by a therapist one by one"})

    def problems(self) -> list[tuple[str, str]]:
        found = [("commands", f"{name!r} is not an MQTT command; choose from {', '.join(MQTT_COMMANDS)}")
                 for name in self.commands if name not in MQTT_COMMANDS]
        if bool(self.cert_file) != bool(self.key_file):
            found.append(("cert_file", "a client certificate needs both cert_file and key_file"))
        if (self.ca_file or self.cert_file) and not self.tls:
            found.append(("tls", "ca_file/cert_file are set but tls is false: set tls: true"))
        if "/" in self.chair_id or "+" in self.chair_id or "#" in self.chair_id:
            found.append(("chair_id", f"{self.chair_id!r} cannot be part of a topic: no '/', '+' or '#'"))
        if not self.topic_prefix.strip("/") or any(c in self.topic_prefix for c in "+#"):
            found.append(("topic_prefix", f"{self.topic_prefix!r} must be a topic without '+' or '#'"))
        return found


@dataclass(frozen=True)
class StoreSettings:
    path: str = text("~/.local/share/relaxd/relaxd.db",
                     "the SQLite session record; on the Pi /var/lib/relaxd/relaxd.db")
    busy_timeout_s: float = ranged(5.0, 0.1, 60.0, "wait this long for another process's write lock")


@dataclass(frozen=True)
class ControllerSettings:
    """The relaxation state machine (relaxd.control.controller): every threshold and time."""

    scenarios_file: str = text("", "a therapist's scenario YAML file, added to the shipped scenarios; empty = only the shipped ones")
    default_scenario: str = text("calm-sea", "scenario used when neither the operator nor the child's profile names one")
    calibration_s: float = ranged(15.0, 0.0, 300.0, "starting: seconds of baseline affect at the start level before the rules may raise")
    step: float = ranged(0.1, 0.01, 0.5, "intensity change of one raise or lower (intensity is 0..1)")
    positive_hold_s: float = ranged(5.0, 0.5, 120.0, "positive must be read without a break this long before a raise")
    raise_interval_s: float = ranged(20.0, 1.0, 600.0, "at most one raise per this many seconds")
    lower_interval_s: float = ranged(2.0, 0.2, 60.0, "at most one lower per this many seconds (the first negative reading acts at once)")
    negative_release_s: float = ranged(2.0, 0.0, 30.0, "a negative episode ends after this long without a negative reading (bridges flicker)")
    halt_confidence: float = ranged(0.85, 0.5, 1.0, "a negative reading at least this confident halts at once")
    halt_after_s: float = ranged(6.0, 1.0, 120.0, "a negative episode lasting this long halts")
    halt_fade_s: float = ranged(3.0, 0.5, 30.0, "halt: fade from the current intensity to off over this many seconds")
    halt_min_s: float = ranged(30.0, 0.0, 3600.0, "after a halt the operator may resume only after this many seconds")
    no_face_pause_s: float = ranged(3.0, 0.5, 60.0, "no face for this long pauses at pause_intensity")
    child_left_s: float = ranged(20.0, 1.0, 600.0, "still no face this long after the pause: 'child left the chair' alert")
    pause_intensity: float = ranged(0.1, 0.0, 0.5, "intensity while paused (never above the session's own)")
    resume_hold_s: float = ranged(2.0, 0.0, 60.0, "face back with non-negative affect this long resumes a no-face pause")
    stop_fade_s: float = ranged(5.0, 0.0, 60.0, "operator stop or scenario end: fade to off over this many seconds")
    reading_timeout_s: float = ranged(3.0, 0.5, 60.0, "no affect reading at all this long while stimulating = fault (vision stalled)")
    learn: bool = field(default=True, metadata={"doc": "when neither the operator nor the profile names a scenario, the "
                                                "learner chooses one for the child and may switch within the session"})
    reassess_s: float = ranged(30.0, 10.0, 900.0, "every this many seconds of a learner-chosen scenario, the affect is "
                               "reassessed: persistent negative switches to another scenario")
    switch_negative_share: float = ranged(0.3, 0.1, 1.0, "switch when at least this share of the face readings of the "
                                          "last reassessment interval were negative")
    crossfade_s: float = ranged(8.0, 1.0, 60.0, "a switch cross-fades light and vibration, and the sound out and in, "
                                "over this many seconds")
    calm_hold_s: float = ranged(10.0, 1.0, 120.0, "time to calm: the first run of non-negative face readings this long")
    sensitivity_max_confidence: float = ranged(0.6, 0.0, 0.8, "a child whose calm face reads negative much of the time "
                                               "(at calibration) lowers only on negative readings at least this "
                                               "confident or lasting lower_interval_s; halts are unchanged (0: off)")


@dataclass(frozen=True)
class ActuatorSettings:
    """The outputs (relaxd.actuators): which hardware drives each, its limits and ramps."""

    light_backend: str = choice("simulated", ("simulated", "gpio", "serial"),
                                "RGB light: simulated (records only), gpio (Pi PWM pins), serial (microcontroller)")
    sound_backend: str = choice("simulated", ("simulated", "pygame"), "sound: simulated, or pygame.mixer")
    vibration_backend: str = choice("simulated", ("simulated", "gpio", "serial"),
                                    "vibration motor: simulated, gpio (Pi PWM pin), serial (microcontroller)")
    light_red_pin: int = ranged(17, 0, 27, "gpio: BCM GPIO driving the red MOSFET gate")
    light_green_pin: int = ranged(27, 0, 27, "gpio: BCM GPIO driving the green MOSFET gate")
    light_blue_pin: int = ranged(22, 0, 27, "gpio: BCM GPIO driving the blue MOSFET gate")
    light_pwm_hz: float = ranged(1000.0, 50.0, 10000.0, "gpio: LED PWM frequency (low values band in the camera image)")
    vibration_pin: int = ranged(12, 0, 27, "gpio: BCM GPIO driving the vibration motor driver")
    vibration_pwm_hz: float = ranged(200.0, 20.0, 20000.0, "gpio: motor PWM frequency")
    sound_source: str = choice("pink", ("pink", "tone", "pulse", "file"),
                               "pygame: generated pink noise, soft tone, slow pulse, or sound_file")
    sound_file: str = text("", "pygame: music file (OGG, MP3, WAV) played in a loop when sound_source is file")
    tone_hz: float = ranged(174.0, 40.0, 2000.0, "pygame: pitch of the generated tone and pulse")
    pulse_hz: float = ranged(0.1, 0.02, 2.0, "pygame: swells per second of the pulse (0.1 = six breaths a minute)")
    sample_rate: int = ranged(44100, 8000, 96000, "pygame: mixer sample rate in Hz")
    serial_port: str = text("/dev/ttyACM0", "serial: the microcontroller's port")
    serial_baud: int = ranged(115200, 1200, 2000000, "serial: baud rate (must match the firmware)")
    serial_ack_timeout_s: float = ranged(0.3, 0.01, 5.0, "serial: resend a command not acknowledged within this time")
    serial_retries: int = ranged(2, 0, 10, "serial: resends of an unacknowledged command before the link counts as lost")
    serial_heartbeat_s: float = ranged(0.5, 0.05, 10.0, "serial: send a heartbeat after this long without sending anything")
    serial_link_timeout_s: float = ranged(1.5, 0.1, 30.0, "serial: no valid line from the microcontroller this long = link lost")
    serial_handshake_timeout_s: float = ranged(3.0, 0.1, 30.0, "serial: keep sending HELLO this long (boards that reset on open)")
    serial_deadman_ms: int = ranged(1500, 100, 10000, "serial: the firmware turns every output off after this long without a valid line")
    max_light: float = ranged(1.0, 0.0, 1.0, "ceiling of the light brightness, whatever the scenario or child asks")
    max_sound: float = ranged(0.8, 0.0, 1.0, "ceiling of the sound volume")
    max_vibration: float = ranged(0.8, 0.0, 1.0, "ceiling of the vibration level")
    light_ramp_up_per_s: float = ranged(0.1, 0.001, 10.0, "fastest rise of the light brightness, per second")
    sound_ramp_up_per_s: float = ranged(0.1, 0.001, 10.0, "fastest rise of the sound volume, per second")
    vibration_ramp_up_per_s: float = ranged(0.1, 0.001, 10.0, "fastest rise of the vibration level, per second")
    ramp_down_per_s: float = ranged(0.5, 0.01, 100.0, "fastest fall of any level, per second (e-stop ignores it)")
    color_ramp_per_s: float = ranged(0.2, 0.001, 10.0, "fastest change of each colour component, per second")
    max_step_s: float = ranged(0.25, 0.01, 5.0, "a ramp step uses at most this much time, so a late update never jumps")
    all_off_lock_wait_s: float = ranged(0.05, 0.0, 1.0, "all-off waits at most this long for a running update before writing zeros anyway")
    history_len: int = ranged(1000, 10, 100000, "simulated outputs remember this many changes")

    def problems(self) -> list[tuple[str, str]]:
        """The serial link's timing rules (only when a serial backend is chosen)."""
        if "serial" not in (self.light_backend, self.vibration_backend):
            return []
        found = []
        if not self.serial_heartbeat_s < self.serial_link_timeout_s:
            found.append(("serial_heartbeat_s", f"{self.serial_heartbeat_s:g} must be shorter than "
                          f"actuators.serial_link_timeout_s ({self.serial_link_timeout_s:g}), or the link is "
                          "declared lost between heartbeats"))
        if not self.serial_heartbeat_s * 1000.0 < self.serial_deadman_ms:
            found.append(("serial_heartbeat_s", f"{self.serial_heartbeat_s:g} s must be shorter than "
                          f"actuators.serial_deadman_ms ({self.serial_deadman_ms} ms), or the firmware turns "
                          "the outputs off between heartbeats"))
        return found


@dataclass(frozen=True)
class IpcSettings:
    """The control socket (relaxd.ipc) that relaxctl and the panel talk to."""

    socket: str = text("$XDG_RUNTIME_DIR/relaxd/relaxd.sock",
                       "Unix socket path ($VARS and ~ expanded; unset XDG_RUNTIME_DIR = /tmp/relaxd-UID); "
                       "on the Pi /run/relaxd/relaxd.sock; empty = no control socket")
    group: str = text("relaxd", "the socket file's group (mode 0660): its members may use relaxctl; "
                      "skipped with a log note if the group does not exist")
    max_line_bytes: int = ranged(65536, 256, 1048576, "longest request line; a longer one is refused and "
                                 "its connection closed")
    max_clients: int = ranged(16, 1, 256, "most connections served at once; more are refused as busy")
    command_timeout_s: float = ranged(2.0, 0.1, 30.0, "a command waits this long for the control loop to "
                                      "take it, else it is dropped and answered with a timeout")
    idle_timeout_s: float = ranged(600.0, 1.0, 86400.0, "a client silent this long is disconnected")


DEFAULT_PANEL_PIN = "1234"  # the panel warns, on screen and in its log, until a chair has its own


@dataclass(frozen=True)
class PanelSettings:
    """The touchscreen panel (relaxd.panel, its own process, a client of the control socket)."""

    pin: str = text(DEFAULT_PANEL_PIN, "4 to 8 digits that unlock the panel's settings screen (e-stop reset); "
                    "quote it in YAML (pin: \"4711\"); change the default on every chair")
    poll_interval_s: float = ranged(0.25, 0.05, 5.0, "the panel asks the daemon for its status this often")
    request_timeout_s: float = ranged(3.0, 0.5, 30.0, "a panel command waits this long for the daemon's answer "
                                      "(keep it above ipc.command_timeout_s)")
    estop_timeout_s: float = ranged(1.0, 0.1, 5.0, "STOP's own connection waits at most this long for the daemon")
    report_timeout_s: float = ranged(30.0, 1.0, 300.0, "a session report picture may take this long to render "
                                     "(seconds on a Pi 4 the first time)")
    reconnect_initial_s: float = ranged(0.5, 0.05, 10.0, "first wait before reconnecting to a daemon that went away")
    reconnect_max_s: float = ranged(5.0, 0.1, 60.0, "longest wait between reconnect attempts (back-off cap)")
    timeline_s: float = ranged(300.0, 30.0, 3600.0, "the home screen's timeline shows this many seconds")
    caps_step: float = ranged(0.05, 0.01, 0.5, "each - or + on the caps screen moves a cap by this much")
    fps: int = ranged(20, 5, 60, "frames drawn per second")
    notice_s: float = ranged(4.0, 1.0, 30.0, "messages (a refused command, STOP sent) stay on screen this long")


@dataclass(frozen=True)
class Settings:
    camera: CameraSettings = field(default_factory=CameraSettings)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    affect: AffectSettings = field(default_factory=AffectSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    control: ControllerSettings = field(default_factory=ControllerSettings)
    actuators: ActuatorSettings = field(default_factory=ActuatorSettings)
    safety: SafetySettings = field(default_factory=SafetySettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    ipc: IpcSettings = field(default_factory=IpcSettings)
    panel: PanelSettings = field(default_factory=PanelSettings)

    def problems(self) -> list[tuple[str, str]]:
        """Rules across sections, as (dotted key, message)."""
        found = []
        if not self.panel.request_timeout_s > self.ipc.command_timeout_s:
            found.append(("panel.request_timeout_s", f"{self.panel.request_timeout_s:g} must be longer than "
                          f"ipc.command_timeout_s ({self.ipc.command_timeout_s:g}), or the panel gives up on "
                          "commands the daemon is still carrying out"))
        return found
