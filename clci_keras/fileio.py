"""Small file helpers shared by every layer (a leaf module: imports nothing of clci_keras)."""
from __future__ import annotations

import os


def umask_mode(base=0o666):
    """``base`` with the process umask applied: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def publish(tmp, path):
    """Give ``tmp`` the user's default file mode and rename it to ``path`` (atomic).

    ``tempfile.mkstemp`` creates files with mode 0600; an output renamed from
    such a file would stay unreadable to the user's group, unlike a file the
    user wrote directly (0644 under umask 022).
    """
    os.chmod(tmp, umask_mode())
    os.replace(tmp, path)
