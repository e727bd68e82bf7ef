#!/bin/sh
# Installs the Debian packages tide builds, tests and benchmarks with.
# (The console's npm packages come with the build: scripts/console-build.sh
# runs npm ci from console/package-lock.json.  chromium and firefox-esr are
# for its browser tests, driven by playwright-core and puppeteer-core from
# that lock: no browser download.)
# Skips what is already present; runs `apt-get update` only when something
# is missing. Needs root (or sudo) on Debian 12.
set -eu

PKGS="make gcc clang pkg-config libc6-dev
libevent-dev liblua5.4-dev lua5.4 libcjson-dev libreadline-dev libssl-dev libcrypt-dev openssl
lua-busted lua-socket tmux strace curl wrk
libnats-dev nats-server
libclang-rt-14-dev
nodejs npm
chromium firefox-esr fonts-dejavu-core"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        # A tool installed outside dpkg (e.g. node from another source) counts.
        case "$p" in
            nodejs) command -v node >/dev/null 2>&1 && continue ;;
            npm) command -v npm >/dev/null 2>&1 && continue ;;
            clang) command -v clang >/dev/null 2>&1 && continue ;;
        esac
        missing="$missing $p"
    fi
done

[ -z "$missing" ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "install-deps: installing$missing" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >&2
