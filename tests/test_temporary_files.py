"""Where the tests' temporary files go (``tests/conftest.py``): a RAM disk only where it is a ``tmpfs`` that may hold
programs, and only in a folder of the user's own."""

import os
from pathlib import Path

from conftest import is_ram_disk, ours


def test_only_a_tmpfs_that_may_hold_programs_is_taken_for_a_ram_disk(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0\n/dev/vda / ext4 rw,relatime 0 0\n")
    assert is_ram_disk(Path("/dev/shm"), mounts) and not is_ram_disk(Path("/"), mounts)
    mounts.write_text("tmpfs /dev/shm tmpfs rw,nosuid,nodev,noexec 0 0\n")  # compiled kernels could not load
    assert not is_ram_disk(Path("/dev/shm"), mounts)
    assert not is_ram_disk(Path("/dev/shm"), tmp_path / "no such table")  # not Linux


def test_a_link_a_file_or_another_users_folder_is_not_taken_for_the_users_own(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("")
    assert ours(tmp_path / "real") and not ours(tmp_path / "link") and not ours(tmp_path / "file")
    if os.geteuid() == 0:  # root can give a folder to another user (nobody)
        os.chown(tmp_path / "real", 65534, 65534)
        assert not ours(tmp_path / "real")
