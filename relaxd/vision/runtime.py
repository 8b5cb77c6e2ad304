"""The TFLite interpreter, from whichever runtime package is installed.

The chair needs no TensorFlow. On x86 and arm64 with Python >= 3.10 the runtime is
``ai-edge-litert``; on Raspberry Pi OS Bookworm (Python 3.11) ``tflite-runtime`` may
be what is available; a workstation with TensorFlow can use ``tensorflow.lite``. The
first one found, in that order, is chosen once at import; ``RUNTIME_NAME`` says which.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from relaxd.errors import ModelError, RuntimeMissingError

INSTALL_HINT = "pip install ai-edge-litert (or tflite-runtime on Raspberry Pi OS Bookworm / Python 3.11)"

Interpreter: Optional[type] = None
RUNTIME_NAME = ""
"""``ai-edge-litert``, ``tflite-runtime``, ``tensorflow`` or ``""`` when none is installed."""

try:
    from ai_edge_litert.interpreter import Interpreter

    RUNTIME_NAME = "ai-edge-litert"
except ImportError:
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]

        RUNTIME_NAME = "tflite-runtime"
    except ImportError:
        try:
            import tensorflow as _tf

            Interpreter = _tf.lite.Interpreter
            RUNTIME_NAME = "tensorflow"
        except ImportError:
            pass


def load_interpreter(model: Union[Path, bytes], threads: int = 1) -> Any:
    """Open a ``.tflite`` model (a path, or its bytes) and allocate its tensors.

    Raises ``RuntimeMissingError`` when no runtime is installed and ``ModelError``
    (naming the file) when the model is missing or not a valid TFLite flatbuffer.
    """
    if Interpreter is None:
        raise RuntimeMissingError(f"no TFLite runtime is installed: {INSTALL_HINT}")
    if isinstance(model, (bytes, bytearray)):
        source, kwargs = "model bytes", {"model_content": bytes(model)}
    else:
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"model {path} not found: check classifier.model in the configuration")
        source, kwargs = f"model {path}", {"model_path": str(path)}
    try:
        with without_native_lines(DELEGATE_BANNER):
            interpreter = Interpreter(num_threads=threads, **kwargs)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise ModelError(
            f"{source} is not a valid TFLite model ({error}): re-export it with train-and-export"
        ) from None
    return interpreter


# TFLite's C++ logger prints this to the process's stderr on every load; it is normal, and read
# as trouble by everyone who sees it. The runtime has no Python switch for its log level.
DELEGATE_BANNER = b"Created TensorFlow Lite XNNPACK delegate"


@contextmanager
def without_native_lines(*markers: bytes) -> Iterator[None]:
    """Hold file descriptor 2 (where native libraries log) in the block, then pass on every line
    that contains none of ``markers``: known noise goes, anything else still reaches the reader."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to keep quiet
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True)
                    if not any(marker in line for marker in markers)]
            if kept:
                os.write(2, b"".join(kept))
