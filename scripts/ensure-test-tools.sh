#!/usr/bin/env bash
# Tools some tests drive besides Python packages: Debian's Chromium headless shell (the chat page
# and admin browser tests, through Playwright's Python driver, which downloads nothing; the shell
# Playwright's own headless runs use: the same engine as the whole browser, for half its CPU),
# promtool (from Debian's `prometheus` package, to check the alert rules), and espeak-ng and ffmpeg
# (the media tests speak a real voice note and encode it as Ogg/Opus). Installed with apt when
# missing and we run as root; otherwise one line says what to do.
set -euo pipefail

missing=()
command -v chromium-headless-shell >/dev/null 2>&1 || missing+=(chromium-headless-shell)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-test-tools: missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "ensure-test-tools: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
