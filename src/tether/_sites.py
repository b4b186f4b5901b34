"""Where in the user's code something happened: cheap call-site capture.

Diagnostics (pool holders, unclosed streams, leak reports) name the ``file:line`` of the
call in the user's code that acquired or created something. Capturing it must be cheap
enough for hot paths, so :func:`user_site` reads one or two frames, takes no traceback and
formats nothing: the returned :class:`Site` becomes a string only when shown.
"""

from __future__ import annotations

import os
import sys
from types import CodeType, FrameType
from typing import Final, NamedTuple, final

_PACKAGE_DIR: Final = os.path.dirname(os.path.abspath(__file__)) + os.sep


@final
class Site(NamedTuple):
    """A place in source code: a file name and a line number."""

    filename: str
    lineno: int

    def __str__(self) -> str:
        return f"{_shorten(self.filename)}:{self.lineno}"


UNKNOWN_SITE: Final = Site("<unknown>", 0)


def outside_tether(frame: FrameType) -> tuple[FrameType, int]:
    """The first frame from ``frame`` outwards whose code is not tether's own (or the
    outermost frame), and how many of tether's frames came before it."""
    skipped = 0
    while frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        back = frame.f_back
        if back is None:
            break
        frame = back
        skipped += 1
    return frame, skipped


def user_code(depth: int = 1) -> tuple[CodeType | None, int]:
    """Like :func:`user_site`, but return the raw ``(code, instruction offset)``.

    Cheaper than :func:`user_site` (no line-number lookup); turn it into a :class:`Site`
    with :func:`code_site` when it is shown.
    """
    try:
        frame, _ = outside_tether(sys._getframe(depth + 1))
    except ValueError:
        return None, 0
    return frame.f_code, frame.f_lasti


def code_site(code: CodeType | None, offset: int) -> Site:
    """The :class:`Site` of instruction ``offset`` in ``code``."""
    if code is None:
        return UNKNOWN_SITE
    for start, end, line in code.co_lines():
        if start <= offset < end and line is not None:
            return Site(code.co_filename, line)
    return Site(code.co_filename, code.co_firstlineno)


def user_site(depth: int = 1) -> Site:
    """Return the site of the first frame outside tether, starting ``depth`` frames up.

    ``depth=1`` starts at the caller of the function that calls ``user_site``: a public
    tether function calls ``user_site()`` to learn where *it* was called from. Frames that
    belong to tether itself (a wrapper around the pool, say) are skipped, so the site is
    always in the user's code.
    """
    try:
        frame, _ = outside_tether(sys._getframe(depth + 1))
    except ValueError:
        return UNKNOWN_SITE
    return Site(frame.f_code.co_filename, frame.f_lineno)


def _shorten(filename: str) -> str:
    """Show a path relative to the working directory when it lies below it."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        return filename
    return filename if relative.startswith(os.pardir) else relative
