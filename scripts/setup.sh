#!/usr/bin/env bash
# Set up a fresh machine for kiln: Bun (from the npm registry), the project's packages, the test guest,
# and with --linux the Debian Linux guest (apt-get download + dpkg -x, nothing installed system-wide).
set -euo pipefail
cd "$(dirname "$0")/.."
BUN_VERSION=1.4.5
if ! command -v bun >/dev/null 2>&1 || [ "$(bun --version)" != "$BUN_VERSION" ]; then
  echo "setup: installing bun@$BUN_VERSION from the npm registry" >&2
  npm install -g --silent "bun@$BUN_VERSION" >&2
fi
bun install --frozen-lockfile >&2
bash scripts/build-guest.sh >&2
if [ "${1:-}" = "--linux" ]; then
  bash scripts/fetch-linux-guest.sh >&2
fi
if [ ! -c /dev/kvm ]; then
  echo "setup: warning: /dev/kvm is missing; kiln needs KVM to run guests" >&2
fi
