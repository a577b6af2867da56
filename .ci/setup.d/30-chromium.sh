#!/usr/bin/env bash
# Debian's Chromium, the headless browser that `make screenshots` and tests/test_screenshots.py
# drive through Playwright (its own browser download is not used).
set -euo pipefail

if ! command -v chromium >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
chromium --version 2>/dev/null
