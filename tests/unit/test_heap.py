"""syncd.heap: big buffers stay mapped (and go back to the kernel) after a big one was freed."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

# One process per case: the threshold is process-wide and cannot be put back.
_PROBE = """
import ctypes, sys
from syncd.heap import keep_large_blocks_mapped

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost").split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    keep_large_blocks_mapped()
    keep_large_blocks_mapped()  # a second call changes nothing
big = bytearray(8 << 20)
del big  # left alone, glibc now serves blocks up to 8 MiB from the heap
before = libc.mallinfo2().hblks
body = bytearray(1 << 20)
print(libc.mallinfo2().hblks - before)
"""


def _has_mallinfo2() -> bool:
    try:
        ctypes.CDLL(None).mallinfo2  # noqa: B018 - glibc >= 2.33
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _has_mallinfo2(),
                    reason="glibc only")
@pytest.mark.parametrize(("mode", "mapped"), [("fixed", 1), ("default", 0)])
def test_a_megabyte_body_is_mapped_only_with_the_fixed_threshold(mode: str, mapped: int) -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True)
    assert int(out.stdout) == mapped
