#!/usr/bin/env bash
# Debian packages the integration tests use (namespaces, real P2P clients, the benign corpus). Tests skip
# with a reason where one is absent on a developer laptop, but fail instead under CI=true.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
here=$(dirname "$0")
packages=(iproute2 util-linux procps)
for list in "$here"/packages-*.txt; do
    [ -f "$list" ] || continue
    while read -r pkg _; do
        case "$pkg" in ''|'#'*) continue ;; esac
        packages+=("$pkg")
    done <"$list"
done
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
