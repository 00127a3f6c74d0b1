#!/usr/bin/env bash
# The Debian packages the test suite needs, installed when missing (as root with apt), else the one line to run.
#   openssh-server  sshd: Fabric's peer, the boxes of the end-to-end tests
#   haproxy         the fleet gateway
#   iproute2        network namespaces: the end-to-end box with its own address
#   chromium        the playground page, driven by Playwright in the suite
#   libsndfile1 libportaudio2  soundfile's and moshi's shared libraries
set -euo pipefail
PACKAGES=(openssh-server haproxy iproute2 chromium libsndfile1 libportaudio2)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
line="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages the tests need: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "the tests need Debian packages that are missing: ${missing[*]}; run as root: $line" >&2
  exit 1
fi
