"""PackageIndex against this machine's real dpkg database (Debian and derivatives)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from endpoint_agent.collect.packages import PackageIndex

DPKG_LIST = Path("/var/lib/dpkg/info/coreutils.list")

pytestmark = pytest.mark.skipif(not DPKG_LIST.exists(), reason="no dpkg database with coreutils here")


@pytest.fixture(scope="module")
def index() -> PackageIndex:
    return PackageIndex()


def test_ls_is_owned_by_coreutils_whichever_path_names_it(index: PackageIndex) -> None:
    ls = shutil.which("ls")
    assert ls is not None
    assert index.owner(os.path.realpath(ls)) == "coreutils"  # what /proc/<pid>/exe would say
    assert index.owner("/bin/ls") == "coreutils"
    assert index.owner("/usr/bin/ls") == "coreutils"


def test_ls_matches_its_recorded_checksum(index: PackageIndex) -> None:
    assert index.verify("/usr/bin/ls") is True


def test_a_copy_of_ls_is_not_owned_and_has_no_verdict(index: PackageIndex, tmp_path: Path) -> None:
    copy = tmp_path / "ls"
    shutil.copy2("/usr/bin/ls", copy)
    assert index.owner(str(copy)) is None
    assert index.verify(str(copy)) is None


def test_directories_are_not_owned(index: PackageIndex) -> None:
    assert index.owner("/usr/bin") is None
    assert index.owner("/bin") is None
    assert len(index) > 1000


def test_a_modified_copy_in_a_copied_dpkg_root_fails_verification(tmp_path: Path) -> None:
    """The real coreutils records in a tmp root: the real ls verifies, a patched one does not."""
    root = tmp_path / "root"
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    shutil.copy2("/var/lib/dpkg/status", root / "var/lib/dpkg/status")
    for suffix in (".list", ".md5sums"):
        shutil.copy2(DPKG_LIST.with_suffix(suffix), info / f"coreutils{suffix}")
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    ls = root / "usr/bin/ls"
    shutil.copy2("/usr/bin/ls", ls)
    idx = PackageIndex(str(root), use_rpm=False)
    assert idx.owner("/usr/bin/ls") == "coreutils"
    assert idx.verify("/usr/bin/ls") is True
    data = bytearray(ls.read_bytes())
    data[-1] ^= 0xFF
    ls.write_bytes(bytes(data))
    assert idx.verify("/usr/bin/ls") is False
