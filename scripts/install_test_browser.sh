#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the serve page's browser test (tests/serve/test_serve_page.py),
# unless /usr/bin/chromium is already there. Playwright drives it; its own browser download is never used.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version
