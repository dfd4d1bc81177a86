"""PackageIndex on a fake root: merged-/usr both ways, diversions, refresh, integrity, rpm.

The root is a tmp dir laid out like a Debian system (relative /bin -> usr/bin symlink,
var/lib/dpkg/{status,info,diversions}); the real dpkg database is in test_packages_real.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from endpoint_agent.collect.packages import PackageIndex
from tests.support.doubles import FakeClock


@dataclass
class FakeRoot:
    root: Path

    @property
    def info(self) -> Path:
        return self.root / "var/lib/dpkg/info"

    def install(
        self, stem: str, files: dict[str, bytes], dirs: tuple[str, ...] = ("/usr", "/usr/bin")
    ) -> None:
        """Write the files and dpkg's records of them; bump the db mtime like dpkg does."""
        for path, content in files.items():
            target = self.root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        listing = ["/.", *dirs, *files]
        (self.info / f"{stem}.list").write_text("\n".join(listing) + "\n")
        sums = [f"{hashlib.md5(c).hexdigest()}  {p.lstrip('/')}" for p, c in files.items()]
        (self.info / f"{stem}.md5sums").write_text("\n".join(sums) + "\n")
        self.touch_db()

    def touch_db(self) -> None:
        status = self.root / "var/lib/dpkg/status"
        status.write_text(status.read_text() + "Package: x\n")
        st = status.stat()
        os.utime(status, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # coarse timestamps


@pytest.fixture
def fake(tmp_path: Path) -> FakeRoot:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    (root / "bin").symlink_to("usr/bin")  # merged /usr, relative as on Debian
    (root / "sbin").symlink_to("/usr/sbin")  # absolute: resolved inside the root, not the host
    fake = FakeRoot(root)
    fake.install("coreutils", {"/bin/ls": b"ls binary"}, dirs=("/bin",))  # old-style path
    fake.install("newtool:amd64", {"/usr/bin/newtool": b"new tool"})
    fake.install("daemon", {"/sbin/daemond": b"daemon"}, dirs=("/sbin",))
    return fake


def index(fake: FakeRoot, clock: FakeClock | None = None) -> PackageIndex:
    return PackageIndex(str(fake.root), clock=clock or FakeClock(), check_interval=30, use_rpm=False)


def test_merged_usr_works_in_both_directions(fake: FakeRoot) -> None:
    idx = index(fake)
    assert idx.owner("/usr/bin/ls") == "coreutils"  # listed as /bin/ls, run as /usr/bin/ls
    assert idx.owner("/bin/ls") == "coreutils"
    assert idx.owner("/bin/newtool") == "newtool"  # listed as /usr/bin/newtool; arch qualifier dropped
    assert idx.owner("/usr/sbin/daemond") == "daemon"  # via an absolute symlink inside the root
    assert idx.owner("/usr/bin/../bin/ls") == "coreutils"
    assert idx.owner("//usr/./bin//ls") == "coreutils"


def test_dot_dot_is_applied_after_symlinks_like_the_kernel_does(fake: FakeRoot) -> None:
    fake.install("libexec", {"/usr/libexec/helper": b"helper"}, dirs=("/usr", "/usr/libexec"))
    idx = index(fake)
    assert idx.owner("/bin/../libexec/helper") == "libexec"  # /bin -> /usr/bin, so .. is /usr
    assert idx.owner("/libexec/helper") is None


def test_unlisted_files_relative_paths_and_directories_have_no_owner(fake: FakeRoot, tmp_path: Path) -> None:
    (fake.root / "usr/bin/dropped").write_bytes(b"ls binary")  # same content, not installed by dpkg
    idx = index(fake)
    assert idx.owner("/usr/bin/dropped") is None
    assert idx.owner("/usr/bin") is None and idx.owner("/bin") is None  # shared directories
    assert idx.owner("usr/bin/ls") is None
    assert idx.owner("/nonexistent/ls") is None


def test_directories_are_dropped_whatever_order_they_are_listed_in(fake: FakeRoot) -> None:
    # /opt/app is resolved on the way to /opt/app/sub before any file directly in it is seen.
    (fake.info / "app.list").write_text("/opt/app/sub/tool\n/opt/app\n/opt/app/sub\n/opt/app/file\n/opt\n")
    idx = index(fake)
    assert idx.owner("/opt/app/file") == "app" and idx.owner("/opt/app/sub/tool") == "app"
    assert idx.owner("/opt/app") is None and idx.owner("/opt/app/sub") is None and idx.owner("/opt") is None


def test_a_symlinked_directory_outside_packages_lends_no_identity_later(fake: FakeRoot) -> None:
    # /opt/x is a link to /usr/bin at the first query, then becomes a real dir with another `ls`.
    (fake.root / "opt").mkdir()
    link = fake.root / "opt/x"
    link.symlink_to("/usr/bin")
    idx = index(fake)
    assert idx.owner("/opt/x/ls") == "coreutils"
    link.unlink()
    link.mkdir()
    (link / "ls").write_bytes(b"impostor")
    assert idx.owner("/opt/x/ls") is None


def test_symlink_loops_do_not_hang(fake: FakeRoot) -> None:
    (fake.root / "loop-a").symlink_to("loop-b")
    (fake.root / "loop-b").symlink_to("loop-a")
    assert index(fake).owner("/loop-a/ls") is None


def test_diversions_give_each_copy_its_own_package(fake: FakeRoot) -> None:
    fake.install("libpq-dev", {"/usr/bin/pg_config": b"libpq's"})
    fake.install("postgresql-common", {"/usr/bin/pg_config": b"wrapper"})
    # libpq-dev's file was moved aside by dpkg; its list still says /usr/bin/pg_config.
    (fake.root / "usr/bin/pg_config.libpq-dev").write_bytes(b"libpq's")
    diversions = "/usr/bin/pg_config\n/usr/bin/pg_config.libpq-dev\npostgresql-common\n"
    (fake.root / "var/lib/dpkg/diversions").write_text(diversions)
    idx = index(fake)
    assert idx.owner("/usr/bin/pg_config") == "postgresql-common"
    assert idx.owner("/usr/bin/pg_config.libpq-dev") == "libpq-dev"
    assert idx.verify("/usr/bin/pg_config") is True
    assert idx.verify("/usr/bin/pg_config.libpq-dev") is True


def test_index_refreshes_only_after_the_interval_and_a_db_change(fake: FakeRoot) -> None:
    clock = FakeClock()
    idx = index(fake, clock)
    assert idx.owner("/usr/bin/later") is None
    fake.install("later", {"/usr/bin/later": b"later"})
    assert idx.owner("/usr/bin/later") is None  # not checked again yet
    clock.advance(31)
    assert idx.owner("/usr/bin/later") == "later"
    clock.advance(31)
    assert idx.refresh() is False  # checked, nothing changed: no rebuild
    assert idx.refresh(force=True) is True


def test_a_removed_package_stops_owning_its_files(fake: FakeRoot) -> None:
    clock = FakeClock()
    idx = index(fake, clock)
    assert idx.owner("/usr/bin/newtool") == "newtool"
    (fake.info / "newtool:amd64.list").unlink()
    fake.touch_db()
    clock.advance(30)
    assert idx.owner("/usr/bin/newtool") is None


def test_verify_matches_untouched_and_flags_modified_files(fake: FakeRoot) -> None:
    idx = index(fake)
    assert idx.verify("/usr/bin/ls") is True
    assert idx.verify("/bin/ls") is True
    target = fake.root / "usr/bin/ls"
    target.write_bytes(b"ls binarX")  # same size, new content
    assert idx.verify("/usr/bin/ls") is False


def test_verify_is_not_fooled_by_a_restored_mtime(fake: FakeRoot) -> None:
    idx = index(fake)
    target = fake.root / "usr/bin/ls"
    assert idx.verify("/usr/bin/ls") is True  # cached now
    before = target.stat()
    with open(target, "r+b") as fh:  # same inode, same size
        fh.write(b"LS")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert idx.verify("/usr/bin/ls") is False  # ctime moved: the cached verdict does not apply


def test_verify_has_no_verdict_without_a_record(fake: FakeRoot, tmp_path: Path) -> None:
    idx = index(fake)
    outside = tmp_path / "copy-of-ls"
    outside.write_bytes(b"ls binary")
    assert idx.verify(str(outside)) is None  # not owned
    (fake.info / "coreutils.md5sums").write_text("")
    assert index(fake).verify("/usr/bin/ls") is None  # owned, no checksum recorded
    (fake.root / "usr/bin/newtool").unlink()
    assert idx.verify("/usr/bin/newtool") is None  # recorded, but gone


def test_a_fifo_in_place_of_a_packaged_file_fails_verification_without_blocking(fake: FakeRoot) -> None:
    target = fake.root / "usr/bin/newtool"
    target.unlink()
    os.mkfifo(target)
    assert index(fake).verify("/usr/bin/newtool") is False


def test_no_dpkg_database_means_an_empty_index(tmp_path: Path) -> None:
    idx = PackageIndex(str(tmp_path), use_rpm=False)
    assert len(idx) == 0 and idx.owner("/usr/bin/ls") is None and idx.verify("/usr/bin/ls") is None


FAKE_RPM = """#!/bin/sh
# Stands in for rpm (not installed here): records its argv, prints what `rpm -qa --qf` would.
printf '%s\\0' "$@" > "{argv_file}"
printf '/usr/bin/rpmtool\\trpmtool\\n/usr/bin\\tfilesystem\\n/usr/lib/rpmlib.so\\t(none)\\n'
printf 'garbage line without a tab\\n'
"""


def test_rpm_owned_files_are_indexed(fake: FakeRoot, tmp_path: Path) -> None:
    argv_file = tmp_path / "argv"
    rpm = tmp_path / "rpm"
    rpm.write_text(FAKE_RPM.format(argv_file=argv_file))
    rpm.chmod(stat.S_IRWXU)
    idx = PackageIndex(str(fake.root), rpm_path=str(rpm))
    assert idx.owner("/usr/bin/rpmtool") == "rpmtool"
    assert idx.owner("/bin/rpmtool") == "rpmtool"
    assert idx.owner("/usr/bin") is None and idx.owner("/usr/lib/rpmlib.so") is None
    assert idx.verify("/usr/bin/rpmtool") is None  # no rpm checksums are read
    assert idx.owner("/usr/bin/ls") == "coreutils"  # dpkg's records are still there
    argv = argv_file.read_text().split("\0")[:-1]
    assert argv == ["--root", str(fake.root.resolve()), "-qa", "--qf", "[%{FILENAMES}\t%{=NAME}\n]"]


def test_a_failing_rpm_leaves_dpkg_records_intact(fake: FakeRoot, tmp_path: Path) -> None:
    rpm = tmp_path / "rpm"
    rpm.write_text("#!/bin/sh\necho 'error: db broken' >&2\nexit 1\n")
    rpm.chmod(stat.S_IRWXU)
    idx = PackageIndex(str(fake.root), rpm_path=str(rpm))
    assert idx.owner("/usr/bin/ls") == "coreutils"
