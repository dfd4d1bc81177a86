#!/usr/bin/env bash
# Debian packages the integration tests use (namespaces, real P2P clients, the benign corpus), listed in
# .ci/packages-*.txt. Tests skip with a reason where one is absent on a developer laptop, but fail instead
# under CI=true.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
here=$(dirname "$0")
packages=(iproute2 util-linux procps)
for list in "$here"/packages-*.txt; do
    [ -f "$list" ] || continue
    while read -r pkg _; do
        case "$pkg" in '' | '#'*) continue ;; esac
        packages+=("$pkg")
    done <"$list"
done

# Installing openssh-server or redis-server must not start machine-wide daemons on their real ports:
# the tests start their own, on loopback, inside namespaces. policy-rc.d exit 101 = "do not start".
created_policy_rc=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy_rc=1
fi
cleanup() { [ -z "$created_policy_rc" ] || rm -f /usr/sbin/policy-rc.d; }
trap cleanup EXIT

apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
