"""A storage directory is not made under an fstab mount point that is not mounted (eternia_backup/mounts.py).

An unmounted NAS share or USB disk leaves an empty directory; `mkdir -p` under it put the
backups on the disk beneath, where they fill it and vanish once the share is mounted again.
The machine's own /proc/self/mountinfo is read; /etc/fstab is a file written by the test
(a test cannot edit the machine's, nor mount a share).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eternia_backup import mounts


@pytest.fixture
def fstab(tmp_path, monkeypatch):
    """Write the lines of an /etc/fstab that the code reads instead of the machine's."""
    path = tmp_path / "fstab"

    def write(*lines: str) -> Path:
        path.write_text("\n".join(lines) + "\n")
        return path

    monkeypatch.setattr(mounts, "FSTAB", path)
    return write


def test_fstab_and_mountinfo_are_read_as_written(tmp_path):
    fstab = tmp_path / "fstab"
    fstab.write_text("# <file system> <mount point> <type> <options> <dump> <pass>\n"
                     "UUID=1234 / ext4 errors=remount-ro 0 1\n"
                     "UUID=5678 none swap sw 0 0\n"
                     "/dev/sdb1 swap swap defaults 0 0\n"
                     "//nas/share /mnt/my\\040nas cifs noauto,user 0 0\n"
                     "\n"
                     "   # an indented comment\n"
                     "proc\n")
    assert mounts.declared_mount_points(fstab) == {Path("/"), Path("/mnt/my nas")}
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
                         "40 22 0:35 / /media/usb\\040disk rw - vfat /dev/sdc1 rw\n")
    assert mounts.mounted_points(mountinfo) == {Path("/"), Path("/media/usb disk")}
    assert mounts.declared_mount_points(tmp_path / "missing") == set()
    assert mounts.mounted_points(tmp_path / "missing") is None


def test_the_nearest_declared_mount_point_decides(tmp_path, fstab):
    nas, mounted = tmp_path / "nas", Path("/proc")  # /proc is mounted on every Linux machine
    nas.mkdir()
    fstab("UUID=1 / ext4 defaults 0 1", f"//server/share {nas} nfs noauto 0 0", "proc /proc proc defaults 0 0")
    assert mounts.unmounted_mount_point(nas / "backups" / "app") == nas
    assert mounts.unmounted_mount_point(nas) == nas
    assert mounts.unmounted_mount_point(tmp_path / "elsewhere") is None  # only / above it, and / is mounted
    assert mounts.unmounted_mount_point(mounted / "self") is None
    (tmp_path / "link").symlink_to(nas)
    assert mounts.unmounted_mount_point(tmp_path / "link" / "backups") == nas  # through a symlink too


def test_no_fstab_refuses_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(mounts, "FSTAB", tmp_path / "no-fstab")  # a container, another system
    assert mounts.unmounted_mount_point(tmp_path / "nas" / "backups") is None


def test_create_refuses_to_make_the_storage_under_an_unmounted_share(app, cli, fstab, tmp_path):
    nas = tmp_path / "nas"
    nas.mkdir()  # the empty directory an unmounted share leaves
    fstab(f"//server/backups {nas} cifs credentials=/root/.smb,noauto 0 0")
    config = app / "eternia-backup.yaml"
    section = {"storage_path": str(nas / "myapp"),
               "sources": [{"type": "directory", "name": "files", "path": "state/files"}]}

    # the state directory in its default place, beside the storage: refused first
    config.write_text(yaml.safe_dump({"backup": section}))
    proc = cli("create", config=config)
    assert proc.returncode == 1
    assert f"will not make the state directory {nas}/.myapp.eternia" in proc.stderr, proc.stderr
    assert f"under {nas}, a mount point in /etc/fstab that is not mounted: mount it" in proc.stderr
    assert list(nas.iterdir()) == []

    # the state directory elsewhere: the storage directory is refused
    config.write_text(yaml.safe_dump({"backup": {**section, "state_dir": str(tmp_path / "state")}}))
    proc = cli("create", config=config)
    assert proc.returncode == 1
    assert f"the storage directory {nas / 'myapp'} does not exist, and {nas} is a mount point in /etc/fstab " \
           "that is not mounted; mount it" in proc.stderr
    assert list(nas.iterdir()) == []  # nothing was written beneath the mount point

    # a directory the user made there is theirs to use
    (nas / "myapp").mkdir()
    proc = cli("create", "--json", config=config)
    assert proc.returncode == 0, proc.stderr
    assert Path(json.loads(proc.stdout)["location"]).parent == nas / "myapp"


def test_config_check_names_the_unmounted_mount_point(app, cli, fstab, tmp_path):
    nas = tmp_path / "nas"
    nas.mkdir()
    fstab(f"//server/backups {nas} cifs noauto 0 0")
    config = app / "eternia-backup.yaml"
    config.write_text(yaml.safe_dump({"backup": {"storage_path": str(nas / "myapp"),
                                                 "sources": [{"type": "directory", "name": "files",
                                                              "path": "state/files"}]}}))
    proc = cli("config", "check", config=config)
    assert proc.returncode == 1
    assert f"problem: target 'local': {nas / 'myapp'} would be made under {nas}, a mount point in /etc/fstab " \
           "that is not mounted; mount it" in proc.stdout, proc.stdout
