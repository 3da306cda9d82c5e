#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser tests (Playwright drives it; its own
# browser downloads are never used). Idempotent: does nothing when it is there.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "/usr/bin/chromium not found and not root: run 'sudo apt-get install -y chromium' (browser tests will skip)" >&2
  exit 0
fi
echo "/usr/bin/chromium not found: installing it with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq chromium >/dev/null
[ -x /usr/bin/chromium ] || { echo "apt-get did not install /usr/bin/chromium" >&2; exit 1; }
