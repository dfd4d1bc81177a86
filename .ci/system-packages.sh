#!/usr/bin/env bash
# Debian packages the integration tests use; the tests skip with a reason where they are absent,
# but CI (CI=true) must have them.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends iproute2 util-linux procps >/dev/null
