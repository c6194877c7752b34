"""Where the edge agent's sensor windows come from: the input-source interface and the real sources.

An input source hands the agent one window of raw sensor values at a time (shape = the package's
``preprocessing.raw_shape``, e.g. samples x 3 axes), optionally with a ground-truth label that becomes labelled
feedback when the device opted in. ``read()`` never blocks: it returns ``None`` when no window is ready, and
``exhausted`` turns true once no window will ever come again (end of a file, the writer closed stdin or the
socket), which ends the agent after a last report.

Real devices use :func:`open_input` (``tinymlops agent --input ...``):

* ``PATH.npy``: one window (samples x channels) or a stack of them (N x samples x channels);
* ``PATH`` (any other name) or ``-`` (stdin): JSON lines, one window each — either a bare nested list of
  numbers or ``{"values": [[...], ...], "label": 2}`` (``label`` optional);
* ``unix:/path/to.sock`` / ``tcp:HOST:PORT``: connect to a sensor process that writes the same JSON lines.

Lines that are not a window are counted (``bad_lines``) and skipped; the agent never stops on bad input. The
simulator's synthetic stream (``tinymlops.sim.streams``) implements the same interface.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

import numpy as np

from tinymlops.errors import UsageError

log = logging.getLogger("tinymlops.agent")
#: windows read ahead of the agent; a full queue makes the reader wait (back-pressure on a pipe or socket)
READ_AHEAD = 64


@dataclass(frozen=True)
class Window:
    """One window of raw sensor values and, when known, its true class index."""

    values: np.ndarray
    label: int | None = None


@runtime_checkable
class InputSource(Protocol):
    """What the agent reads sensor windows from."""

    def read(self) -> Window | None:
        """Return the next window if one is ready, else ``None`` (never blocks)."""
        ...

    @property
    def exhausted(self) -> bool:
        """Return whether no window will ever come again."""
        ...

    def close(self) -> None:
        """Release the source (files, sockets, threads)."""
        ...


def parse_window(line: str | bytes) -> Window:
    """Parse one JSON line into a window (ValueError if it is not one)."""
    data = json.loads(line)
    label = None
    if isinstance(data, dict):
        if "values" not in data:
            raise ValueError("a window object needs a 'values' key")
        raw_label = data.get("label")
        if raw_label is not None and (isinstance(raw_label, bool) or not isinstance(raw_label, int)):
            raise ValueError(f"label must be an integer class index, not {raw_label!r}")
        label, data = raw_label, data["values"]
    values = np.asarray(data, dtype=np.float32)
    if values.ndim == 0 or values.size == 0:
        raise ValueError("a window must be a non-empty list of numbers")
    return Window(values, label)


class ArraySource:
    """Windows from an array in memory (a loaded ``.npy`` file): N x samples x channels."""

    def __init__(self, windows: np.ndarray, labels: np.ndarray | None = None) -> None:
        self._windows, self._labels, self._next = windows, labels, 0

    def read(self) -> Window | None:
        if self._next >= len(self._windows):
            return None
        i, self._next = self._next, self._next + 1
        label = int(self._labels[i]) if self._labels is not None else None
        return Window(np.asarray(self._windows[i], dtype=np.float32), label)

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._windows)

    def close(self) -> None:
        self._next = len(self._windows)


class LineSource:
    """JSON-lines windows from a byte stream (file, stdin, socket), read by a daemon thread.

    The thread parses ahead (up to :data:`READ_AHEAD` windows) so ``read()`` never blocks the agent's loop, and a
    daemon thread never keeps a stopping agent alive while it waits on a silent pipe or socket.
    """

    def __init__(self, stream: IO[bytes], name: str, closer: socket.socket | None = None) -> None:
        self.name = name
        self.bad_lines = 0
        self._stream, self._closer = stream, closer
        self._q: queue.Queue[Window | None] = queue.Queue(maxsize=READ_AHEAD)
        self._ended = False
        self._thread = threading.Thread(target=self._pump, name=f"input-{name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for n, line in enumerate(self._stream, start=1):
                if not line.strip():
                    continue
                try:
                    self._q.put(parse_window(line))
                except ValueError as exc:
                    self.bad_lines += 1
                    log.warning("%s line %d is not a window: %s", self.name, n, str(exc)[:200])
        except (OSError, ValueError) as exc:  # the peer reset the connection or the stream was closed under us
            log.warning("%s: input ended: %s", self.name, exc)
        finally:
            self._q.put(None)

    def read(self) -> Window | None:
        if self._ended:
            return None
        try:
            w = self._q.get_nowait()
        except queue.Empty:
            return None
        if w is None:
            self._ended = True
        return w

    @property
    def exhausted(self) -> bool:
        return self._ended

    def close(self) -> None:
        self._ended = True
        if self._closer is not None:
            self._closer.close()
        if self._stream is not sys.stdin.buffer:
            self._stream.close()


def _connect(spec: str) -> tuple[socket.socket, str]:
    kind, _, where = spec.partition(":")
    try:
        if kind == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(where)
        else:
            host, _, port = where.rpartition(":")
            if not host or not port.isdigit():
                raise UsageError(f"--input {spec}: expected tcp:HOST:PORT")
            s = socket.create_connection((host, int(port)), timeout=10)
            s.settimeout(None)
    except OSError as exc:
        raise UsageError(f"--input {spec}: cannot connect: {exc.strerror or exc}") from None
    return s, spec


def open_input(spec: str) -> InputSource:
    """Open the input source a ``--input`` value names (UsageError naming the value if it cannot be opened)."""
    if spec == "-":
        return LineSource(sys.stdin.buffer, "stdin")
    if spec.startswith(("unix:", "tcp:")):
        sock, name = _connect(spec)
        return LineSource(sock.makefile("rb"), name, closer=sock)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--input {spec}: no such file (give a .npy or JSON-lines file, -, unix:PATH or "
                         "tcp:HOST:PORT)")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--input {spec}: not a readable .npy array: {exc}") from None
        if arr.ndim < 2 or not np.issubdtype(arr.dtype, np.number):
            raise UsageError(f"--input {spec}: expected a numeric array of windows, got shape {arr.shape} "
                             f"({arr.dtype})")
        return ArraySource(arr[None] if arr.ndim == 2 else arr)
    return LineSource(path.open("rb"), str(path))
