#!/usr/bin/env bash
# Install the headless browser the website tests drive (tests/site/test_browser.py):
# Debian's chromium and chromium-driver, from the distribution's package archive
# (no browser downloads). Does nothing when both are already there.
set -euo pipefail

CHROMIUM=${GQA_CHROMIUM:-/usr/bin/chromium}
CHROMEDRIVER=${GQA_CHROMEDRIVER:-/usr/bin/chromedriver}

if [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: $CHROMIUM / $CHROMEDRIVER missing and apt-get is not available;" >&2
    echo "install Chromium and its matching chromedriver, or point GQA_CHROMIUM / GQA_CHROMEDRIVER at them." >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_browser.sh: need root (or sudo) to apt-get install chromium chromium-driver" >&2
        exit 1
    fi
fi

echo "Installing chromium and chromium-driver (Debian packages) for the website tests..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# Recommends pull in printing and desktop services the headless tests do not need; fonts they do.
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-liberation fonts-dejavu-core

for f in "$CHROMIUM" "$CHROMEDRIVER"; do
    if [ ! -x "$f" ]; then
        echo "install_browser.sh: $f still missing after apt-get install" >&2
        exit 1
    fi
done
"$CHROMIUM" --version
