"""Whether this process's uploads are moving: what lets the end of a run wait for a long upload (the best weights
on a slow link) and still give up on a store that stopped taking it (``outbox.Outbox.drain``).

An upload cannot be watched from outside MLflow's call, but the kernel can be asked: an HTTP ``PUT`` reads its file
as the link takes it (S3 reads it part by part), and bytes the link has not taken yet wait in the TCP connection's
send queue. So two figures move while an upload goes on and stand still when the store stops reading: the offsets
of the files this process has open for reading, and the bytes queued on its TCP connections. Files open for writing
(logs, the journal, a SQLite store) are left out: they move whether or not anything is uploaded.

Both are read from Linux's ``/proc``; elsewhere :func:`upload_position` is None, and a wait ends ``drain_seconds``
after the last delivery, as before (raise ``tracking.drain_seconds`` for a long upload there).
"""

from __future__ import annotations

import os


def upload_position() -> tuple[int, int] | None:
    """(offsets of the files open for reading, bytes queued on TCP connections), summed; None off Linux. Only a
    change means something: a figure that moves is an upload going on."""
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return None
    offsets, sockets = 0, set()
    for fd in descriptors:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                sockets.add(target[len("socket:[") : -1])
            elif target.startswith("/"):
                offsets += _read_offset(fd)
        except OSError:  # closed meanwhile
            continue
    return offsets, _queued(sockets)


def _read_offset(fd: str) -> int:
    """The offset of a descriptor open for reading only, else 0."""
    with open(f"/proc/self/fdinfo/{fd}") as info:
        fields = dict(line.split(":", 1) for line in info if ":" in line)
    return int(fields.get("pos", "0")) if int(fields.get("flags", "1"), 8) & (os.O_WRONLY | os.O_RDWR) == 0 else 0


def _queued(sockets: set[str]) -> int:
    """Bytes sent on these sockets (by inode) that the other end has not yet acknowledged."""
    queued = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows)  # the header
                for row in rows:
                    fields = row.split()
                    if fields[9] in sockets:
                        queued += int(fields[4].split(":")[0], 16)
        except (OSError, StopIteration):
            continue
    return queued
