"""Real file-system faults for tests: a small tmpfs that fills up, an ext4 image the
kernel turns read-only. Each mounts only where the machine allows it (root; otherwise
the test skips or injects the error) and always unmounts, even when the test fails."""

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount here ({done.stderr.strip() or done.returncode})")


def _unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def small_tmpfs(path: Path, size_kib: int):
    """A tmpfs of `size_kib` at `path` (created), unmounted on leaving."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    _mount("-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path))
    try:
        yield path
    finally:
        _unmount(path)


def fill(directory: Path, name: str = "ballast") -> Path:
    """Write a ballast file until the file system is full (to the last page); returns it."""
    ballast = directory / name
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return ballast


@contextlib.contextmanager
def ext4_image(path: Path, image: Path, size_mib: int = 16):
    """An ext4 file system in `image`, loop-mounted at `path` with errors=remount-ro."""
    if os.geteuid() != 0:
        pytest.skip("loop-mounting an image needs root")
    path.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"no mkfs.ext4 here: {made.stderr.strip()}")
    _mount("-o", "loop,errors=remount-ro", str(image), str(path))
    try:
        yield path
    finally:
        _unmount(path)


def turn_read_only(path: Path) -> None:
    """Make the kernel turn the ext4 file system at `path` read-only, as it does on a
    disk error (`errors=remount-ro`). It stays so until unmounted."""
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(path)], capture_output=True,
                            text=True).stdout.strip()
    trigger = Path("/sys/fs/ext4") / os.path.basename(source) / "trigger_fs_error"
    if not trigger.exists():
        pytest.skip("this kernel cannot trigger an ext4 error")
    trigger.write_text("test\n")
