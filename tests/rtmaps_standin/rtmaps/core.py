"""Stand-in of rtmaps.core: the diagram's log and clock."""

import time

REPORTS = []
_START = time.time()


def _report(level, text):
    REPORTS.append((level, str(text)))


def report_info(text):
    _report("info", text)


def report_warning(text):
    _report("warning", text)


def report_error(text):
    _report("error", text)


def current_time():
    """Microseconds since the diagram started (RTMaps' base clock)."""
    return int((time.time() - _START) * 1e6)
