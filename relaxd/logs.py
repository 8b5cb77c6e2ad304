"""Structured logging for the daemon and its tools, set up once at start.

Both ``structlog.get_logger(...)`` and plain ``logging.getLogger(...)`` (ours and
third-party libraries') end in one stdlib handler on stderr, rendered by structlog:
JSON lines when stderr is not a terminal (systemd passes it to journald, where each
line stays one searchable record), coloured key=value lines on a terminal.
This is structlog's documented "ProcessorFormatter" recipe, nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator, TextIO

import structlog

from relaxd.errors import ConfigError

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMATS = ("auto", "json", "console")

# Runs for structlog and stdlib records alike, before the renderer.
_SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.stdlib.ExtraAdder(),
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


class _RelaxdHandler(logging.StreamHandler):
    """Our handler on the root logger; its own class so reconfiguring replaces only it.

    Without a stream of its own it writes to whatever ``sys.stderr`` is when a record comes,
    so a redirected or replaced stderr (a test's capture that has since closed) is followed.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route all logging to ``stream`` (default: stderr) at ``level`` and above.

    ``fmt``: ``json``, ``console``, or ``auto`` (console on a terminal, JSON otherwise).
    Safe to call again (e.g. after the config file is read): it replaces its own handler.
    """
    if level not in LEVELS:
        raise ConfigError(f"unknown log level {level!r}; use one of: {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown log format {fmt!r}; use one of: {', '.join(FORMATS)}")
    target = stream if stream is not None else sys.stderr
    is_tty = hasattr(target, "isatty") and target.isatty()
    if fmt == "json" or (fmt == "auto" and not is_tty):
        # Plain traceback text, never local variables: they could hold a camera frame.
        final: list[structlog.typing.Processor] = [
            structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        final = [structlog.dev.ConsoleRenderer(colors=is_tty)]

    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *_SHARED_PROCESSORS,
                    structlog.stdlib.PositionalArgumentsFormatter(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # re-configurable (tests, CLI flags); our log volume is small
    )
    handler = _RelaxdHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RelaxdHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    logging.captureWarnings(True)  # warnings.warn() from libraries becomes a log record too


@contextlib.contextmanager
def temporary_logging(level: str, fmt: str, stream: TextIO | None = None) -> Iterator[None]:
    """``configure_logging`` for a block (a benchmark, a tool); the previous set-up is restored after."""
    root = logging.getLogger()
    handlers, previous_level = list(root.handlers), root.level
    configure_logging(level, fmt, stream=stream)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(previous_level)
        logging.captureWarnings(False)
        structlog.reset_defaults()
