"""One writer per store: an advisory lock on `<store>.lock`, held for a whole `bench submit` or `bench gc`.

    with writer_lock(store_path, lock_path, wait=False, command="bench submit grid.toml"): ...

A second writer refuses at once, naming the holder, or with `wait` queues behind it. flock is released by
the kernel when its process ends, so a killed driver never leaves the store locked.

Only the holder removes the lock file, while it still holds it, on its way out; so whoever locks a file
checks that the path still names the file it locked (device and inode), and otherwise locks the new one.
A refused process touches nothing, and no lock file outlives a run that ended normally.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bench.errors import BenchError
from bench.store.schema import StoreError


@contextmanager
def writer_lock(store_path: Path, lock_path: Path, wait: bool = False, command: str = "",
                on_wait=None) -> Iterator[None]:
    told = False
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(f"--db: cannot make the lock file {lock_path}: {err.strerror or err}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
                if not wait:
                    raise BenchError(f"{store_path} is being written by another bench process ({holder}); wait for "
                                     "it to finish, pass --wait to queue behind it, or use another --db") from None
                if on_wait and not told:
                    on_wait(holder)
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock_path)
                mine = os.fstat(fd)
                if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                    break
            except FileNotFoundError:
                pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed that file as it left: lock the one at the path now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {command or 'bench'}".encode(), 0)
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # still held: a process queued on this file sees it gone
        os.close(fd)  # releases the lock
