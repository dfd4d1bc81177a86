#!/bin/sh
# Used by tests/integration/packaging/test_deb.py: install, use and purge the .deb without changing
# this machine. Runs as PID 1 of a new PID namespace with a private mount namespace: an overlay of /
# (writes go to a tmpfs), fresh /proc, /run and /tmp, and a policy-rc.d that forbids starting
# services; the package is installed, run and purged in a chroot of that overlay.
# Usage: deb_in_overlay.sh SCRATCH_DIR PACKAGE.deb
set -eu
T=$1
DEB=$2
mount -t tmpfs tmpfs "$T"
mkdir "$T/upper" "$T/work" "$T/m"
mount -t overlay overlay -o lowerdir=/,upperdir="$T/upper",workdir="$T/work" "$T/m"
M="$T/m"
mount -t proc proc "$M/proc"
mount --rbind /dev "$M/dev"
mount -t tmpfs tmpfs "$M/run"
mount -t tmpfs tmpfs "$M/tmp"
printf '#!/bin/sh\nexit 101\n' > "$M/usr/sbin/policy-rc.d"; chmod 755 "$M/usr/sbin/policy-rc.d"
cp "$DEB" "$M/tmp/pkg.deb"
inroot() { chroot "$M" "$@"; }
echo "== install"
inroot dpkg -i /tmp/pkg.deb
echo "== status-installed $(inroot dpkg-query -W -f='${Status}' endpoint-agent)"
echo "== version $(inroot endpoint-agent --version) / $(inroot endpoint-admin --version)"
inroot endpoint-agent check-policy /etc/endpoint-agent/policy.yaml
echo "== state-dir $(stat -c %a "$M/var/lib/endpoint-agent")"
echo "== unit $(grep ^ExecStart= "$M/lib/systemd/system/endpoint-agent.service")"
inroot env ENDPOINT_AGENT_ENFORCE_SCOPE_PID=$$ endpoint-agent run --config /etc/endpoint-agent/config.yaml \
    --no-process-events --exec-gate off --no-notify --scan-interval 3600 > "$T/agent.log" 2>&1 &
AGENT=$!
n=0
until inroot endpoint-agent status --config /etc/endpoint-agent/config.yaml > "$T/status.txt"; do
    n=$((n + 1)); [ $n -lt 600 ] || { echo "agent never ran"; cat "$T/agent.log"; exit 1; }
    kill -0 $AGENT 2>/dev/null || { echo "agent exited"; cat "$T/agent.log"; exit 1; }
    sleep 0.1
done
echo "== running $(head -1 "$T/status.txt")"
kill -TERM $AGENT; wait $AGENT || true
echo "== remove"
inroot dpkg -r endpoint-agent
there() { if test -e "$M/$1"; then echo yes; else echo no; fi; }
echo "== after-remove opt=$(there opt/endpoint-agent/bin) conf=$(there etc/endpoint-agent/config.yaml)"
inroot dpkg --purge endpoint-agent
echo "== after-purge conf=$(there etc/endpoint-agent) state=$(there var/lib/endpoint-agent) bin=$(there usr/bin/endpoint-agent)"
echo "== done"
