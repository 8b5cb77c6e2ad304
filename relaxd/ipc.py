"""The control socket: a local Unix socket that speaks versioned JSON lines.

Who uses it: ``relaxctl`` and the touchscreen panel (its own process). There is no network
listener; access is the socket file's permissions (mode 0660, group ``ipc.group``).

One request per line, one reply per line, in order, on the same connection::

    {"v": 1, "id": 7, "cmd": "pause", "args": {}}
    {"v": 1, "id": 7, "ok": true, "result": {"state": "paused"}}
    {"v": 1, "id": 7, "ok": false, "error": {"code": "rejected", "message": "cannot pause while idle; ..."}}

Commands (``args`` in brackets are optional; ``by`` names who, for the record):

    status                                  state, last transition's reason, session, intensity,
                                            levels, caps, affect, active alarms, health
    start {profile, [scenario]}             a session for a child's pseudonym (profile created if new)
    pause | resume | stop                   operator commands of the controller
    estop {[by]}                            trips the e-stop latch: outputs off before the reply
    reset {[by]}                            releases the latch, controller to idle; starts nothing
    ack {id, [by]}                          acknowledges an alarm
    set_caps {[light], [sound], [vibration]}  the child's caps, 0..1; saved to the session's profile
    list_profiles | list_scenarios | list_sessions {[limit], [profile]}
    report {session}                        a session's report (session id or "latest"): PNG and CSV
                                            written to reports/ beside the socket; replies their paths

The parts, each with one job:

* ``ControlServer``: the socket (stale-file handling, permissions), a thread per client
  (at most ``max_clients``, plus a reserved lane on which e-stop and status are always
  answered), line limits, JSON framing. It knows nothing about the chair:
  it hands ``(cmd, args)`` to a dispatch callable and turns a ``CommandError`` into an
  error reply. A bad client never reaches the chair: garbage, oversized lines and
  vanished clients end that client only.
* ``relaxd.commands.ChairCommands``: the command table (what each command does to the chair).
* ``ControlClient``: the client side, for ``relaxctl`` and the panel.
"""

from __future__ import annotations

import errno
import grp
import json
import os
import socket
import socketserver
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import structlog

from relaxd.errors import RelaxdError
from relaxd.settings import IpcSettings

log = structlog.get_logger(__name__)

PROTOCOL_VERSION = 1
SOCKET_MODE = 0o660
MAX_SOCKET_PATH = 107  # bytes in sockaddr_un.sun_path on Linux, less the terminating NUL

# Error codes of the protocol (the "code" of an error reply).
BAD_JSON = "bad_json"  # the line is not UTF-8 JSON
BAD_REQUEST = "bad_request"  # JSON, but not a request object (no cmd, args not an object, ...)
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_COMMAND = "unknown_command"
BAD_ARGS = "bad_args"
REJECTED = "rejected"  # the chair's state does not allow it now (nothing changed)
NOT_FOUND = "not_found"
TIMEOUT = "timeout"  # the control loop did not answer in time
LINE_TOO_LONG = "line_too_long"  # the connection is closed after this reply
BUSY = "busy"  # too many clients; the connection is closed after this reply
FAILED = "failed"  # the command was valid but failed (e.g. the store)
INTERNAL = "internal"  # a bug: see the daemon's log

# The reserved lane: a server full of clients (idle panels, a flood) must never lock out STOP.
# A connection beyond ``max_clients`` may still send one request; e-stop and status are served
# on it, anything else is told busy. Each reserved connection gets a few seconds only, so
# idle clients cannot hold the lane the way they can hold the ordinary slots.
RESERVED_SLOTS = 8
RESERVED_COMMANDS = frozenset({"estop", "status"})
RESERVED_READ_S = 2.0


class IpcError(RelaxdError):
    """Base class of the control socket's errors."""


class SocketInUseError(IpcError):
    """Another live daemon answers on the socket path."""


class DaemonUnreachableError(IpcError):
    """The client cannot connect to the daemon, or the connection broke."""


class CommandError(IpcError):
    """A command got (server side: must get) an error reply with this code."""

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id  # echoed in the error reply


# ---------------------------------------------------------------------------------------
# Paths


def resolve_socket_path(value: str) -> Optional[Path]:
    """The socket path from the ``ipc.socket`` setting; None when it is empty (no socket).

    ``~`` and ``$VARS`` are expanded. An unset ``$XDG_RUNTIME_DIR`` (a container, a
    service without a user session) falls back to ``/tmp/relaxd-<uid>``.
    """
    if not value.strip():
        return None
    if "XDG_RUNTIME_DIR" in value and not os.environ.get("XDG_RUNTIME_DIR"):
        fallback = str(Path(tempfile.gettempdir()) / f"relaxd-{os.getuid()}")
        value = value.replace("${XDG_RUNTIME_DIR}", fallback).replace("$XDG_RUNTIME_DIR", fallback)
    expanded = os.path.expanduser(os.path.expandvars(value.strip()))
    if "$" in expanded:
        raise IpcError(f"ipc.socket {value!r} names an unset environment variable: set it, or give a plain path")
    path = Path(expanded)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise IpcError(f"ipc.socket {path} is {len(os.fsencode(path))} bytes long; Unix sockets allow at most "
                       f"{MAX_SOCKET_PATH}: choose a shorter path (e.g. /run/relaxd/relaxd.sock)")
    return path


# ---------------------------------------------------------------------------------------
# Framing


@dataclass(frozen=True)
class Request:
    id: Any  # echoed in the reply: a string, a number or null
    cmd: str
    args: dict[str, Any]


def encode(message: Mapping[str, Any]) -> bytes:
    """One JSON line (strict JSON: NaN and infinities are refused)."""
    return json.dumps(message, allow_nan=False, separators=(",", ":")).encode("utf-8") + b"\n"


def ok_reply(request_id: Any, result: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result}


def error_reply(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": {"code": code, "message": message}}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


def parse_request(line: bytes) -> Request:
    """Decode one request line; a bad one raises ``CommandError`` carrying its id when readable."""
    try:
        message = json.loads(line.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CommandError(BAD_JSON, f"the request is not a UTF-8 JSON line ({exc}); send e.g. "
                                     '{"v": 1, "id": 1, "cmd": "status", "args": {}}') from None
    if not isinstance(message, dict):
        raise CommandError(BAD_REQUEST, f"a request is a JSON object, got {type(message).__name__}")
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int, float, type(None))):
        raise CommandError(BAD_REQUEST, "id must be a string, a number or null")
    cmd, args = message.get("cmd"), message.get("args")
    args = {} if args is None else args
    unknown = set(message) - {"v", "id", "cmd", "args"}
    if message.get("v") != PROTOCOL_VERSION:
        problem = (UNSUPPORTED_VERSION, f"this relaxd speaks protocol version {PROTOCOL_VERSION}; "
                                        f"the request has v={message.get('v')!r}")
    elif not isinstance(cmd, str) or not cmd:
        problem = (BAD_REQUEST, "the request needs a command name in 'cmd', e.g. \"status\"")
    elif not isinstance(args, dict):
        problem = (BAD_REQUEST, f"'args' must be a JSON object, got {type(args).__name__}")
    elif unknown:
        problem = (BAD_REQUEST, f"unknown request field(s) {sorted(unknown)}; a request has v, id, cmd, args")
    else:
        return Request(request_id, cmd, args)
    raise CommandError(*problem, request_id=request_id)


# ---------------------------------------------------------------------------------------
# The server

Dispatch = Callable[[str, dict[str, Any]], Any]


class _ClientHandler(socketserver.StreamRequestHandler):
    """One client: read a line, answer it, until the client goes, idles out or misbehaves."""

    server: "_UnixServer"

    def setup(self) -> None:
        self.timeout = self.server.owner.settings.idle_timeout_s
        super().setup()

    def handle(self) -> None:
        owner = self.server.owner
        limit = owner.settings.max_line_bytes
        while True:
            try:
                line = self.rfile.readline(limit + 1)  # +1: room for the newline of a full-length line
            except OSError:  # idle timeout, or the client reset the connection
                return
            if not line:
                return
            if len(line) > limit and not line.endswith(b"\n"):
                self._send(error_reply(None, LINE_TOO_LONG, f"request lines are limited to {limit} bytes "
                                                            "(ipc.max_line_bytes); closing this connection"))
                return
            if not line.strip():
                continue
            if not self._send_bytes(owner.respond(line)):
                return

    def _send(self, reply: Mapping[str, Any]) -> bool:
        return self._send_bytes(encode(reply))

    def _send_bytes(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            return True
        except OSError:  # the client went away before its reply: its loss, not the chair's
            log.debug("ipc.client_gone")
            return False


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64  # listen backlog: a burst of connects waits here instead of failing with EAGAIN

    def __init__(self, owner: "ControlServer") -> None:
        self.owner = owner
        super().__init__(str(owner.path), _ClientHandler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if self.owner._admit(request):
            super().process_request(request, client_address)
        elif self.owner._reserved.acquire(blocking=False):
            threading.Thread(target=self._serve_reserved, args=(request,), name="relaxd-ipc-reserved",
                             daemon=True).start()
        else:
            self._refuse_busy(request)

    def _busy_reply(self) -> bytes:
        return encode(error_reply(None, BUSY, f"relaxd already serves {self.owner.settings.max_clients} clients "
                                              "(ipc.max_clients); try again shortly (estop and status are "
                                              "always answered)"))

    def _refuse_busy(self, request: socket.socket) -> None:
        try:
            request.sendall(self._busy_reply())
        except OSError:
            pass
        self.shutdown_request(request)

    def _serve_reserved(self, request: socket.socket) -> None:
        """One request on the reserved lane: e-stop or status answered, anything else busy."""
        try:
            request.settimeout(RESERVED_READ_S)
            with request.makefile("rb") as rfile:
                line = rfile.readline(self.owner.settings.max_line_bytes + 1)
            try:
                cmd = parse_request(line).cmd
            except CommandError:
                cmd = None
            reply = self.owner.respond(line) if cmd in RESERVED_COMMANDS else self._busy_reply()
            log.info("ipc.reserved_lane", cmd=cmd, served=cmd in RESERVED_COMMANDS)
            request.sendall(reply)
        except OSError:
            pass  # silent past RESERVED_READ_S, or gone: the lane is free again
        finally:
            self.owner._reserved.release()
            self.shutdown_request(request)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.owner._release(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("ipc.client_failed")


class ControlServer:
    """Serves ``dispatch(cmd, args)`` on a Unix socket, one thread per client.

    ``start()`` replaces a stale socket file left by a crash, but refuses (``SocketInUseError``)
    while another daemon answers on it. ``stop()`` closes every client and removes the file
    if it is still the one this server created.
    """

    def __init__(self, path: Path, dispatch: Dispatch, settings: IpcSettings) -> None:
        self.path = Path(path)
        self.settings = settings
        self._dispatch = dispatch
        self._server: Optional[_UnixServer] = None
        self._thread: Optional[threading.Thread] = None
        self._clients: set[socket.socket] = set()
        self._reserved = threading.BoundedSemaphore(RESERVED_SLOTS)
        self._lock = threading.Lock()
        self._inode: Optional[int] = None

    def start(self) -> "ControlServer":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._remove_stale_socket()
            self._server = _UnixServer(self)
            self._inode = os.stat(self.path).st_ino
            os.chmod(self.path, SOCKET_MODE)
        except OSError as exc:
            if self._server is not None:
                self._server.server_close()
                self._server = None
            raise IpcError(f"cannot create the control socket {self.path} ({exc}): check that its folder is "
                           "writable by the relaxd user, or set ipc.socket") from exc
        self._set_group()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="relaxd-ipc", daemon=True)
        self._thread.start()
        log.info("ipc.listening", socket=str(self.path), mode=oct(SOCKET_MODE))
        return self

    def stop(self) -> None:
        """Stop accepting, end every client connection, remove the socket file."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            if os.stat(self.path).st_ino == self._inode:  # not a newer daemon's socket
                self.path.unlink()
        except FileNotFoundError:
            pass
        log.info("ipc.stopped", socket=str(self.path))

    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def respond(self, line: bytes) -> bytes:
        """The reply line to one request line. Never raises."""
        request_id = None
        try:
            request = parse_request(line)
            request_id = request.id
            reply = ok_reply(request_id, self._dispatch(request.cmd, request.args))
            return encode(reply)
        except CommandError as exc:
            log.info("ipc.command_error", code=exc.code, message=exc.message)
            return encode(error_reply(request_id if request_id is not None else exc.request_id,
                                      exc.code, exc.message))
        except Exception:
            log.exception("ipc.command_failed")
            return encode(error_reply(request_id, INTERNAL, "relaxd failed to answer this request; "
                                                            "see the daemon's log (journalctl -u relaxd)"))

    # -- internals ------------------------------------------------------------------------

    def _admit(self, client: socket.socket) -> bool:
        with self._lock:
            if len(self._clients) >= self.settings.max_clients:
                log.warning("ipc.busy", clients=len(self._clients))
                return False
            self._clients.add(client)
            return True

    def _release(self, client: socket.socket) -> None:
        with self._lock:
            self._clients.discard(client)

    def _remove_stale_socket(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise IpcError(f"{self.path} exists and is not a socket: move it away, or set ipc.socket to another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise IpcError(f"cannot check the existing socket {self.path} ({exc}): remove it by hand "
                               "if no relaxd is running") from exc
            log.warning("ipc.stale_socket_removed", socket=str(self.path))
            self.path.unlink(missing_ok=True)
            return
        finally:
            probe.close()
        raise SocketInUseError(f"another relaxd is already running and answering on {self.path}: stop it first "
                               "(systemctl stop relaxd), or give this one another ipc.socket")

    def _set_group(self) -> None:
        name = self.settings.group
        if not name:
            return
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            log.info("ipc.group_missing", group=name, note="socket keeps the daemon's group; "
                     f"create it (sudo groupadd {name}) to let operators use relaxctl")
            return
        try:
            os.chown(self.path, -1, gid)
        except PermissionError:
            log.info("ipc.group_not_permitted", group=name, note="the daemon's user is not in that group")


# ---------------------------------------------------------------------------------------
# The client


class ControlClient:
    """One connection to the daemon; ``call(cmd, **args)`` returns the result or raises.

    Raises ``DaemonUnreachableError`` when the daemon cannot be reached or the connection
    breaks, ``CommandError`` (with the reply's code) when the daemon refuses the command.
    """

    def __init__(self, path: Path, *, timeout_s: float = 5.0, max_line_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._max_line = max_line_bytes
        self._sock: Optional[socket.socket] = None
        self._reader: Any = None
        self._next_id = 1

    def connect(self) -> "ControlClient":
        deadline = time.monotonic() + self.timeout_s
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(str(self.path))
                break
            except BlockingIOError as exc:  # the daemon's listen backlog is full: a burst of clients
                sock.close()
                if time.monotonic() >= deadline:
                    raise DaemonUnreachableError(explain_connect_error(self.path, exc)) from exc
                time.sleep(0.05)
            except OSError as exc:
                sock.close()
                raise DaemonUnreachableError(explain_connect_error(self.path, exc)) from exc
        self._sock, self._reader = sock, sock.makefile("rb")
        return self

    def call(self, cmd: str, **args: Any) -> Any:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        request_id, self._next_id = self._next_id, self._next_id + 1
        request = {"v": PROTOCOL_VERSION, "id": request_id, "cmd": cmd,
                   "args": {k: v for k, v in args.items() if v is not None}}
        try:
            try:
                self._sock.sendall(encode(request))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server closed at once (e.g. busy): its reason may still be readable
            line = self._reader.readline(self._max_line)
        except socket.timeout as exc:
            raise DaemonUnreachableError(f"relaxd at {self.path} did not answer {cmd!r} within "
                                         f"{self.timeout_s:g} s: it may be stuck; check its log") from exc
        except OSError as exc:
            raise DaemonUnreachableError(f"the connection to relaxd at {self.path} broke ({exc})") from exc
        if not line:
            raise DaemonUnreachableError(f"relaxd at {self.path} closed the connection without answering {cmd!r}")
        try:
            reply = json.loads(line)
        except ValueError as exc:
            raise DaemonUnreachableError(f"relaxd at {self.path} answered something that is not JSON ({exc})") from exc
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise CommandError(str(error.get("code", INTERNAL)), str(error.get("message", "no message")))
        return reply.get("result")

    def close(self) -> None:
        if self._sock is not None:
            self._reader.close()
            self._sock.close()
            self._sock = self._reader = None

    def __enter__(self) -> "ControlClient":
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()


def explain_connect_error(path: Path, exc: OSError) -> str:
    """Why a connect failed, in words an operator can act on."""
    if isinstance(exc, FileNotFoundError):
        return (f"cannot connect to relaxd: no socket at {path}. Is relaxd running (systemctl status relaxd)? "
                "Does its ipc.socket setting name this path (relaxctl --socket PATH)?")
    if isinstance(exc, ConnectionRefusedError):
        return (f"cannot connect to relaxd: {path} exists but nobody answers; relaxd is not running "
                "(a socket left by a crash). Start relaxd (systemctl start relaxd)")
    if isinstance(exc, PermissionError):
        return (f"cannot connect to relaxd: permission denied on {path}. Add your user to the relaxd group "
                "(sudo usermod -aG relaxd $USER, then log in again)")
    if isinstance(exc, (socket.timeout, BlockingIOError)):
        return f"cannot connect to relaxd at {path}: no answer (it may be stuck; check its log)"
    return f"cannot connect to relaxd at {path}: {exc}"
