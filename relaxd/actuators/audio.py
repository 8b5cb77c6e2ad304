"""Sound through pygame.mixer: a music file, or a generated loop from ``sound_synth``.

``value`` is the volume (0..1). Raising it above 0 starts (or resumes) the loop; setting it to
0 pauses, so a ramp that dips to silence resumes where it was; ``off()`` stops and rewinds.

The mixer is opened with ``pygame.mixer.pre_init(...)`` then ``pygame.mixer.init()``, never
``pygame.init()`` (which would open it first with pygame's defaults). pygame is imported only
when an ``AudioOutput`` is made. Without a sound card set ``SDL_AUDIODRIVER=dummy`` (tests do).
The mixer is one per process, so only one ``AudioOutput`` may be open at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from relaxd.actuators.base import Actuator, AudioError

Source = Union[str, "os.PathLike[str]", np.ndarray]


def _pygame() -> Any:
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError:
        raise AudioError(
            "pygame is not installed: pip install pygame, or set actuators.sound_backend: simulated"
        ) from None
    return pygame


def _open_mixer(pygame: Any, sample_rate: int, buffer_size: int) -> None:
    wanted = (sample_rate, -16, 2)
    current = pygame.mixer.get_init()
    if current is not None:
        if tuple(current) != wanted:
            raise AudioError(f"the pygame mixer is already open as {current}, not {wanted}; "
                             "close the other AudioOutput first")
        return
    pygame.mixer.pre_init(frequency=sample_rate, size=-16, channels=2, buffer=buffer_size)
    try:
        pygame.mixer.init()
    except pygame.error as error:
        raise AudioError(f"cannot open the audio output ({error}): check the sound card and "
                         "SDL_AUDIODRIVER, or set actuators.sound_backend: simulated") from error
    if tuple(pygame.mixer.get_init()) != wanted:
        opened = pygame.mixer.get_init()
        pygame.mixer.quit()
        raise AudioError(f"the audio output opened as {opened} instead of {wanted}; "
                         "choose a sample rate the sound card supports (actuators.sample_rate)")


class AudioOutput(Actuator):
    """A looping sound whose volume is ``value``.

    ``source`` is a music file (OGG, MP3, WAV...) or an int16 sample array of shape (n,) or
    (n, 2) at ``sample_rate`` (see ``sound_synth.synthesize``).
    """

    def __init__(self, source: Source, *, sample_rate: int = 44100, buffer_size: int = 1024,
                 name: str = "sound", config_key: str = "actuators.sound_file") -> None:
        super().__init__(name)
        self._pygame = pygame = _pygame()
        self._sound: Optional[Any] = None
        self._channel: Optional[Any] = None
        self._started = False
        self._paused = False
        self._config_key = config_key
        self._check_source(source)
        _open_mixer(pygame, sample_rate, buffer_size)
        try:
            self._load(source)
        except AudioError:
            pygame.mixer.quit()
            raise

    def _check_source(self, source: Source) -> None:
        if not isinstance(source, np.ndarray):
            path = Path(source)
            if not path.is_file() or not os.access(path, os.R_OK):
                raise AudioError(f"audio file {path} is missing or unreadable: fix {self._config_key}")

    def _load(self, source: Source) -> None:
        pygame = self._pygame
        try:
            if isinstance(source, np.ndarray):
                samples = source if source.ndim == 2 else np.repeat(source[:, None], 2, axis=1)
                self._sound = pygame.sndarray.make_sound(np.ascontiguousarray(samples, dtype=np.int16))
            else:
                self._sound = None
                pygame.mixer.music.load(str(source))
        except (pygame.error, ValueError) as error:
            what = "the generated sound" if isinstance(source, np.ndarray) else f"audio file {source}"
            raise AudioError(f"cannot play {what} ({error}): use an OGG, MP3 or WAV file in {self._config_key}") \
                from error

    def set_source(self, source: Source) -> None:
        """Switch to another sound (a scenario's next phase) at the current volume."""
        self._check_source(source)
        volume, audible = self.value, self.playing
        self._off()
        self._load(source)
        if audible:
            with self._guard(volume > 0.0):
                self._apply(volume)

    @property
    def playing(self) -> bool:
        """True while the loop is audible (started and not paused or stopped)."""
        return self._started and not self._paused

    def _apply(self, value: float) -> None:
        if value == 0.0:
            self._pause()
            return
        if not self._started:
            self._play()
        elif self._paused:
            self._player().unpause()
            self._paused = False
        self._player().set_volume(value)

    def _play(self) -> None:
        if self._sound is not None:
            self._channel = self._sound.play(loops=-1)
            if self._channel is None:
                raise AudioError("no free mixer channel to play the generated sound")
        else:
            self._pygame.mixer.music.play(loops=-1)
        self._started, self._paused = True, False

    def _pause(self) -> None:
        if self._started and not self._paused:
            self._player().pause()
            self._paused = True

    def _player(self) -> Any:
        """The object with pause/unpause/set_volume: the sound's channel, or the music stream."""
        return self._channel if self._sound is not None else self._pygame.mixer.music

    def _off(self) -> None:
        if self._sound is not None:
            self._sound.stop()
        else:
            self._pygame.mixer.music.stop()
        self._started = self._paused = False

    def _release(self) -> None:
        self._pygame.mixer.quit()
