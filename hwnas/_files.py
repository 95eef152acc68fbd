"""File modes for files hwnas writes through a temporary file (`tempfile.mkstemp` creates 0600)."""

from __future__ import annotations

import os


def new_file_mode() -> int:
    """The mode `open(path, "w")` would give a new file: 0o666 less the process umask (0o644 under 022)."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(umask)
    return 0o666 & ~umask
