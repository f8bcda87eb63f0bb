"""The daemon's loggers, with Python's logging module loaded only when a message goes out.

Importing logging (and what it pulls in: traceback, string, weakref...) is 15 ms on our
machines, a fifth of a mount's start-up, and a daemon that is working well logs nothing at
all. `get_logger(name)` gives an object with the Logger methods we use; the first message imports
logging, configures it with `configure`'s settings, and hands every message to it.
"""

from __future__ import annotations

import sys

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40
FORMAT = "unionfs: %(levelname)s %(name)s: %(message)s"

_level = WARNING
_configured = False


def configure(debug: bool) -> None:
    """Messages at WARNING and above, or everything with debug (-d)."""
    global _level
    _level = DEBUG if debug else WARNING
    if "logging" in sys.modules:  # already loaded: set it up now, as the first message would
        _setup()


def _setup() -> None:
    global _configured
    import logging

    if not _configured:
        logging.basicConfig(format=FORMAT)
        _configured = True
    logging.getLogger("unionfs").setLevel(_level)


class Logger:
    """A stand-in for logging.getLogger(name) that costs nothing until it logs."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def debug(self, message: str, *args: object) -> None:
        if _level <= DEBUG:
            self._emit(DEBUG, message, args)

    def info(self, message: str, *args: object) -> None:
        if _level <= INFO:
            self._emit(INFO, message, args)

    def warning(self, message: str, *args: object) -> None:
        self._emit(WARNING, message, args)

    def error(self, message: str, *args: object) -> None:
        self._emit(ERROR, message, args)

    def exception(self, message: str, *args: object) -> None:
        """An error with the traceback of the exception being handled."""
        self._emit(ERROR, message, args, exc_info=True)

    def _emit(
        self, level: int, message: str, args: tuple[object, ...], exc_info: bool = False
    ) -> None:
        import logging

        if not _configured:
            _setup()
        logging.getLogger(self.name).log(level, message, *args, exc_info=exc_info)


def get_logger(name: str) -> Logger:
    return Logger(name)
