"""The two errors of the data pipeline: an unreadable video and a malformed annotation file."""

from __future__ import annotations


class VideoReadError(RuntimeError):
    """A video or frame folder could not be read; the message holds the path and the reason."""

    def __init__(self, path: str, reason: str = "") -> None:
        # DataLoader workers re-raise an exception as ``type(msg)`` with one argument, so
        # ``reason`` must be optional for the error to survive the trip back to the main process.
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}" if reason else str(path))


class AnnotationError(ValueError):
    """An annotation file is malformed; the message reads ``file:line: what is wrong``."""

    def __init__(self, path: str, line: int | None = None, reason: str = "") -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}" if reason else where)
