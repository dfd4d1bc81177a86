#!/usr/bin/env bash
# `make deb`: endpoint-agent_<version>_<arch>.deb in OUT_DIR (default dist/), built with dpkg-deb.
#
# Contents: a Python venv under /opt/endpoint-agent holding this project's wheel and its
# dependencies (built with the system's /usr/bin/python3, which the package depends on);
# /usr/bin/endpoint-agent and /usr/bin/endpoint-admin; the systemd unit; the example config and
# the default policy as conffiles under /etc/endpoint-agent (standalone, monitor mode).
# Maintainer scripts: packaging/deb/postinst, prerm, postrm.
set -euo pipefail
cd "$(dirname "$0")/../.."
out_dir=$(realpath -m "${1:-dist}")
python=${DEB_PYTHON:-/usr/bin/python3}
pip=${PIP:-.venv/bin/pip}  # word-split on purpose: "python -m pip" works too

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' endpoint_agent/__init__.py)
arch=$(dpkg --print-architecture)
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
venv=/opt/endpoint-agent

# The venv is made at its final path inside the staging tree; paths are rewritten below.
$pip wheel --quiet --no-deps . -w "$stage/wheel"
"$python" -m venv --without-pip "$root$venv"
$pip --python "$root$venv/bin/python" install --quiet --no-compile "$stage"/wheel/*.whl
grep -rlF "$root" "$root$venv/bin" "$root$venv/pyvenv.cfg" | xargs sed -i "s#$root##g"
find "$root$venv" -name __pycache__ -prune -exec rm -rf {} +

install -d "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/endpoint-agent" \
    "$root/usr/share/doc/endpoint-agent" "$root/DEBIAN"
for tool in endpoint-agent endpoint-admin; do
    ln -s "$venv/bin/$tool" "$root/usr/bin/$tool"
done
install -m 0644 packaging/systemd/endpoint-agent.service "$root/lib/systemd/system/"
install -m 0644 packaging/config.example.yaml "$root/etc/endpoint-agent/config.yaml"
install -m 0644 policies/default.yaml "$root/etc/endpoint-agent/policy.yaml"
install -m 0644 README.md packaging/README.md -t "$root/usr/share/doc/endpoint-agent/" 2>/dev/null ||
    install -m 0644 README.md "$root/usr/share/doc/endpoint-agent/"
for script in postinst prerm postrm; do
    install -m 0755 "packaging/deb/$script" "$root/DEBIAN/$script"
done
printf '/etc/endpoint-agent/config.yaml\n/etc/endpoint-agent/policy.yaml\n' >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/control" <<CONTROL
Package: endpoint-agent
Version: $version
Architecture: $arch
Maintainer: Endpoint agent maintainers <root@localhost>
Depends: python$pyver
Section: admin
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Description: Endpoint usage policy agent
 Detects and stops peer-to-peer and unapproved applications on a workstation,
 under a local or a signed, centrally distributed policy.
CONTROL

mkdir -p "$out_dir"
deb="$out_dir/endpoint-agent_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$root" "$deb" >/dev/null
echo "$deb"
