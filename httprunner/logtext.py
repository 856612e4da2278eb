"""The same log lines, written for a fraction of the cost.

twistd writes its log through ``twisted.logger``'s ``textFileLogObserver``,
whose formatter builds each line with ``string.Formatter`` in Python and
formats the timestamp (time zone lookup, ``strftime``) anew for every
event: about 23 us a line, where the daemon spends ~100 us on a whole
``GET /<id>``.  The access log writes one line per request, the runner two
per job.

:func:`speed_up_text_log` swaps the formatter of twistd's text observer for
:class:`ClassicLogText`, which produces the very same text: plain
``{name}``, ``{name!r}``, ``{name:spec}`` fields are formatted by
``str.format_map`` (C), and the timestamp prefix is formatted by the
original formatter once per second and reused within it.  Any event the
fast path is not sure to render identically (a failure's traceback, a
legacy ``log_system``, a flattened event, ``{call()}`` or ``{item[0]}``
fields, a formatting error) goes to the original formatter.  Every
observer still receives every event with all its fields (JSON output is
untouched); only the text of twistd's own log file is produced faster.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

from twisted.logger import FileLogObserver, FilteringLogObserver, ILogObserver, LogPublisher

__all__ = ["ClassicLogText", "speed_up_text_log"]

LogEvent = dict[str, Any]
Formatter = Callable[[LogEvent], "str | None"]

#: ``textFileLogObserver`` builds its FileLogObserver with this closure
TEXT_FORMATTER_NAME = "textFileLogObserver.<locals>.formatEvent"
#: distinct format strings judged (our own are a few dozen); bounded anyway
FORMATS_KEPT = 1024
#: a probe event: its text is known, so the prefix before it is the timestamp
_PROBE_TAIL = " [-#-] probe\n"


def _plain_fields(format_string: str) -> bool:
    """Whether ``str.format_map`` renders ``format_string`` exactly as
    twisted.logger's ``formatWithCall`` does: every field a plain name,
    with an optional ``!r``/``!s``/``!a`` and a literal format spec."""
    try:
        for _literal, field, spec, conversion in string.Formatter().parse(format_string):
            if field is None:
                continue
            if not field.isidentifier() or conversion not in (None, "r", "s", "a"):
                return False
            if spec and "{" in spec:
                return False
    except ValueError:
        return False
    return True


class ClassicLogText:
    """A drop-in for the formatter of ``textFileLogObserver``: same text, faster.

    ``original`` is the formatter it replaces; it renders whatever this one
    does not take on, and the timestamps (once per second).
    """

    def __init__(self, original: Formatter) -> None:
        self.original = original
        self._formats: dict[str, bool] = {}
        self._second: int | None = None
        self._stamp = "-"
        # A time format finer than a second (or a broken one) cannot be
        # reused within a second: then every event goes the original way.
        self.fast = self._stamp_of(1_000_000_000.0) == self._stamp_of(1_000_000_000.75) is not None

    def _stamp_of(self, when: float) -> str | None:
        text = self.original({"log_time": when, "log_format": "probe", "log_namespace": "-", "log_level": None})
        if not text or not text.endswith(_PROBE_TAIL):
            return None
        return text[: -len(_PROBE_TAIL)]

    def _timestamp(self, when: Any) -> str | None:
        if type(when) is not float:
            return None
        second = int(when)
        if second != self._second:
            stamp = self._stamp_of(when)
            if stamp is None:
                return None
            self._second, self._stamp = second, stamp
        return self._stamp

    def __call__(self, event: LogEvent) -> str | None:
        format_string = event.get("log_format")
        if (
            not self.fast
            or type(format_string) is not str
            or "log_failure" in event
            or "log_flattened" in event
            or event.get("log_system") is not None
        ):
            return self.original(event)
        plain = self._formats.get(format_string)
        if plain is None:
            if len(self._formats) >= FORMATS_KEPT:
                self._formats.clear()
            plain = self._formats[format_string] = _plain_fields(format_string)
        stamp = self._timestamp(event.get("log_time"))
        if not plain or stamp is None:
            return self.original(event)
        try:
            text = format_string.format_map(event)
        except Exception:
            return self.original(event)  # it says "Unable to format event ..."
        if not text:
            return None
        level = event.get("log_level")
        system = "{namespace}#{level}".format(
            namespace=event.get("log_namespace", "-"), level="-" if level is None else level.name
        )
        line = "%s [%s] %s" % (stamp, system, text)
        if "\n" in line:
            line = line.replace("\n", "\n\t")
        return line + "\n"


def _text_observers(observer: ILogObserver | None) -> list[FileLogObserver]:
    """twistd's (or twist's) text file observers within ``observer``."""
    if isinstance(observer, FilteringLogObserver):
        # twist wraps its observer in a level filter
        return _text_observers(getattr(observer, "_observer", None))
    if isinstance(observer, FileLogObserver):
        name = getattr(observer.formatEvent, "__qualname__", "")
        if name == TEXT_FORMATTER_NAME:
            return [observer]
    return []


def speed_up_text_log(publisher: LogPublisher) -> int:
    """Give the text file observers of ``publisher`` the fast formatter.

    Call it once logging has begun (``startService``: twistd adds its
    observer before it starts the application).  Returns how many
    observers were changed (0 when the log goes elsewhere, e.g. JSON).
    """
    changed = 0
    for observer in list(getattr(publisher, "_observers", ())):
        for text_observer in _text_observers(observer):
            fast = ClassicLogText(text_observer.formatEvent)
            if fast.fast:
                text_observer.formatEvent = fast
                changed += 1
    return changed
