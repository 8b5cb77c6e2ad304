"""Calm sounds made from numbers: soft tones, pink noise, slow pulses.

Each function returns float samples in -1..1 whose length is an exact number of periods,
so the buffer loops without a click: the step from the last sample to the first is as small
as any other step. ``to_int16`` turns them into the interleaved 16-bit buffer pygame plays.
Levels are deliberately low (peak ``amplitude``); the volume then follows the intensity.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

KINDS = ("tone", "pink", "pulse")


def _check(sample_rate: int, seconds: float) -> int:
    if sample_rate < 1000:
        raise ValueError(f"sample_rate must be at least 1000 Hz, got {sample_rate}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    return max(1, int(round(sample_rate * seconds)))


def sine_tone(freq_hz: float = 174.0, *, seconds: float = 4.0, sample_rate: int = 44100,
              amplitude: float = 0.3, overtone: float = 0.15) -> np.ndarray:
    """A soft sine tone with a quiet octave overtone; ``freq_hz`` is rounded to whole cycles per buffer."""
    n = _check(sample_rate, seconds)
    cycles = max(1, int(round(freq_hz * n / sample_rate)))
    phase = 2.0 * np.pi * cycles * np.arange(n) / n
    wave = np.sin(phase) + overtone * np.sin(2.0 * phase)
    return (amplitude * wave / np.max(np.abs(wave))).astype(np.float32)


def pink_noise(*, seconds: float = 8.0, sample_rate: int = 44100, amplitude: float = 0.25,
               low_hz: float = 20.0, seed: Optional[int] = None) -> np.ndarray:
    """Pink (1/f) noise by shaping white noise in the frequency domain.

    The inverse FFT is circular, so the buffer loops seamlessly. Content below ``low_hz``
    (inaudible rumble that would only eat the headroom) is removed.
    """
    n = _check(sample_rate, seconds)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=1.0 / sample_rate)
    audible = freqs >= max(low_hz, sample_rate / n)  # never the DC bin
    scale = np.zeros_like(freqs)
    scale[audible] = 1.0 / np.sqrt(freqs[audible])  # power ~ 1/f means amplitude ~ 1/sqrt(f)
    noise = np.fft.irfft(spectrum * scale, n)
    return (amplitude * noise / np.max(np.abs(noise))).astype(np.float32)


def slow_pulse(carrier_hz: float = 110.0, pulse_hz: float = 0.1, *, sample_rate: int = 44100,
               amplitude: float = 0.3) -> np.ndarray:
    """A low tone that swells and fades once per pulse (0.1 Hz = six breaths a minute).

    The buffer is one pulse long; the raised-cosine envelope starts and ends at silence.
    """
    if pulse_hz <= 0:
        raise ValueError(f"pulse_hz must be positive, got {pulse_hz}")
    tone = sine_tone(carrier_hz, seconds=1.0 / pulse_hz, sample_rate=sample_rate, amplitude=amplitude)
    envelope = 0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(tone.size) / tone.size))
    return (tone * envelope).astype(np.float32)


def to_int16(samples: np.ndarray, channels: int = 2) -> np.ndarray:
    """Float samples in -1..1 to a C-contiguous int16 array of shape (n, channels)."""
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    mono = np.round(clipped * 32767.0).astype(np.int16)
    return np.ascontiguousarray(np.repeat(mono[:, None], channels, axis=1))


def synthesize(kind: str, *, sample_rate: int = 44100, tone_hz: float = 174.0,
               pulse_hz: float = 0.1, channels: int = 2) -> np.ndarray:
    """The int16 loop for ``kind`` (one of ``KINDS``), ready for ``AudioOutput``."""
    if kind == "tone":
        samples = sine_tone(tone_hz, sample_rate=sample_rate)
    elif kind == "pink":
        samples = pink_noise(sample_rate=sample_rate, seed=0)
    elif kind == "pulse":
        samples = slow_pulse(tone_hz, pulse_hz, sample_rate=sample_rate)
    else:
        raise ValueError(f"unknown sound kind {kind!r}: choose one of {', '.join(KINDS)}")
    return to_int16(samples, channels)
