"""Giving the memory freed while a server started back to the operating system.

Loading and warming models (twins checked, conversions, arrays built and dropped) frees most of
what it allocated, but glibc keeps freed heap pages in the process for reuse: a worker serving
three small models held 7.5 MB more than it used. `malloc_trim(0)` returns them, once, when the
server has started.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("berth.serving")


def return_freed_memory() -> None:
    """Hand free heap pages back to the OS (glibc); nothing where there is no malloc_trim."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # musl (Alpine) has none
    except (OSError, AttributeError) as exc:
        log.debug("free memory stays with the process: %s", exc)
        return
    trim(0)
