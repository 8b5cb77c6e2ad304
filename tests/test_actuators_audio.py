"""Sound: the synthesiser's buffers, and pygame.mixer on SDL's dummy audio driver."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from relaxd.actuators import ActuatorClosedError, AudioError, AudioOutput, StimulusLevels, build_bank
from relaxd.actuators import sound_synth
from relaxd.settings import ActuatorSettings

pygame = pytest.importorskip("pygame")

RATE = 22050  # not pygame's default, so the tests see that pre_init was honoured


@pytest.fixture(autouse=True)
def dummy_audio(monkeypatch):
    """No sound card needed: SDL reads the driver when the mixer opens. Close it after each test."""
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    yield
    pygame.mixer.quit()


def wav_file(path, seconds=0.5):
    samples = sound_synth.to_int16(sound_synth.sine_tone(220.0, seconds=seconds, sample_rate=RATE), channels=1)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.tobytes())
    return path


# -- the synthesiser ---------------------------------------------------------------------------


def wrap_step_is_ordinary(x):
    """The jump from the last sample back to the first is no bigger than the biggest ordinary step."""
    return abs(float(x[0]) - float(x[-1])) <= np.max(np.abs(np.diff(x))) + 1e-6


def test_sine_tone_has_its_pitch_and_loops_without_a_click():
    tone = sound_synth.sine_tone(174.0, seconds=2.0, sample_rate=RATE, amplitude=0.3)
    spectrum = np.abs(np.fft.rfft(tone))
    peak_hz = np.argmax(spectrum) * RATE / tone.size
    assert peak_hz == pytest.approx(174.0, abs=0.5)
    assert np.max(np.abs(tone)) == pytest.approx(0.3, rel=1e-3)
    assert wrap_step_is_ordinary(tone)


def test_pink_noise_falls_off_as_one_over_f_and_loops():
    noise = sound_synth.pink_noise(seconds=4.0, sample_rate=RATE, amplitude=0.25, seed=1)
    freqs = np.fft.rfftfreq(noise.size, 1.0 / RATE)
    power = np.abs(np.fft.rfft(noise)) ** 2
    band = (freqs >= 50) & (freqs <= 5000)
    slope = np.polyfit(np.log(freqs[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.15)
    assert power[freqs < 15].sum() < 1e-6 * power.sum()  # no inaudible rumble
    assert np.max(np.abs(noise)) == pytest.approx(0.25, rel=1e-3)
    assert wrap_step_is_ordinary(noise)


def test_slow_pulse_is_one_swell_that_starts_and_ends_silent():
    pulse = sound_synth.slow_pulse(110.0, 0.5, sample_rate=RATE)
    assert pulse.size == 2 * RATE
    quarter = pulse.size // 4
    assert np.max(np.abs(pulse[:quarter // 4])) < 0.05 * np.max(np.abs(pulse))
    assert np.max(np.abs(pulse[2 * quarter - quarter // 4: 2 * quarter + quarter // 4])) > 0.25
    assert wrap_step_is_ordinary(pulse)


def test_synthesize_gives_a_stereo_int16_buffer():
    buffer = sound_synth.synthesize("tone", sample_rate=RATE)
    assert buffer.dtype == np.int16 and buffer.ndim == 2 and buffer.shape[1] == 2
    assert buffer.flags["C_CONTIGUOUS"]
    assert np.array_equal(buffer[:, 0], buffer[:, 1])
    with pytest.raises(ValueError, match="unknown sound kind 'rain'"):
        sound_synth.synthesize("rain")


# -- the mixer -----------------------------------------------------------------------------------


def test_generated_sound_volume_follows_value():
    sound = AudioOutput(sound_synth.synthesize("pink", sample_rate=RATE), sample_rate=RATE)
    assert pygame.mixer.get_init() == (RATE, -16, 2)  # opened with our pre_init parameters
    assert not sound.playing
    sound.value = 0.5
    assert sound.playing  # the only sound, so it plays on the mixer's first channel
    assert pygame.mixer.Channel(0).get_busy()
    assert pygame.mixer.Channel(0).get_volume() == pytest.approx(0.5, abs=1 / 128)
    sound.value = 0.0  # pause: a ramp through silence resumes where it was
    assert not sound.playing and sound.value == 0.0
    sound.value = 0.25
    assert sound.playing
    assert pygame.mixer.Channel(0).get_volume() == pytest.approx(0.25, abs=1 / 128)
    sound.off()
    assert not pygame.mixer.Channel(0).get_busy() and not sound.playing
    sound.close()
    assert pygame.mixer.get_init() is None
    with pytest.raises(ActuatorClosedError):
        sound.value = 0.1


def test_music_file_loops_with_volume_and_stops(tmp_path):
    sound = AudioOutput(wav_file(tmp_path / "calm.wav"), sample_rate=RATE)
    sound.value = 0.4
    assert pygame.mixer.music.get_busy()
    assert pygame.mixer.music.get_volume() == pytest.approx(0.4, abs=1 / 128)
    sound.value = 0.0
    assert not pygame.mixer.music.get_busy()  # paused
    sound.value = 0.6
    assert pygame.mixer.music.get_busy()
    sound.off()
    assert not pygame.mixer.music.get_busy()
    sound.close()


def test_volume_outside_0_to_1_is_refused():
    sound = AudioOutput(sound_synth.synthesize("tone", sample_rate=RATE), sample_rate=RATE)
    with pytest.raises(ValueError, match="sound value"):
        sound.value = 1.5
    assert not sound.playing
    sound.close()


def test_missing_audio_file_names_the_file_and_the_setting(tmp_path):
    missing = tmp_path / "nope.ogg"
    with pytest.raises(AudioError, match=r"nope\.ogg.*actuators\.sound_file"):
        AudioOutput(missing, sample_rate=RATE)


def test_unreadable_audio_file_names_the_file_and_leaves_the_mixer_closed(tmp_path):
    corrupt = tmp_path / "broken.ogg"
    corrupt.write_bytes(b"this is not an Ogg Vorbis stream" * 50)
    with pytest.raises(AudioError, match=r"broken\.ogg"):
        AudioOutput(corrupt, sample_rate=RATE)
    assert pygame.mixer.get_init() is None


def test_build_bank_with_pygame_plays_the_generated_loop():
    settings = ActuatorSettings(sound_backend="pygame", sound_source="pulse", sample_rate=RATE, pulse_hz=0.5)
    bank = build_bank(settings)
    assert isinstance(bank.sound, AudioOutput)
    bank.apply(StimulusLevels(sound_volume=0.3), now=0.0)
    applied = bank.apply(StimulusLevels(sound_volume=0.3), now=0.2)
    assert 0.0 < applied.sound_volume < 0.3  # ramping up
    assert bank.sound.playing and bank.sound.value == applied.sound_volume
    bank.close()
    assert bank.sound.closed and pygame.mixer.get_init() is None


def test_set_source_switches_sounds_at_the_same_volume(tmp_path):
    sound = AudioOutput(sound_synth.synthesize("pink", sample_rate=RATE), sample_rate=RATE)
    sound.value = 0.4
    assert pygame.mixer.Channel(0).get_busy()
    sound.set_source(wav_file(tmp_path / "waves.wav"))  # the scenario's next phase plays a file
    assert not pygame.mixer.Channel(0).get_busy(), "the old sound must stop"
    assert pygame.mixer.music.get_busy() and sound.playing
    assert pygame.mixer.music.get_volume() == pytest.approx(0.4, abs=1 / 128)
    sound.set_source(sound_synth.synthesize("tone", sample_rate=RATE))
    assert not pygame.mixer.music.get_busy() and pygame.mixer.Channel(0).get_busy()
    sound.value = 0.0
    sound.set_source(sound_synth.synthesize("pulse", sample_rate=RATE))
    assert not sound.playing, "switching while silent must not start playing"
    with pytest.raises(AudioError, match="missing.wav"):
        sound.set_source(tmp_path / "missing.wav")
    sound.close()
