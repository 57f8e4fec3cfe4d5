#!/bin/sh
# Installs the Debian packages mailmesh needs to build, test and run its demo.
# As root it runs apt-get itself; otherwise it prints the exact command to run.
# Used by `make deps`, `make test`, `make demo` and .ci/run, so a fresh Debian 12
# machine needs nothing but this repository.
set -eu

BUILD="build-essential pkg-config libsodium-dev libmsgpack-dev libuv1-dev liblmdb-dev libcmocka-dev libinih-dev"
TEST="clang libclang-rt-14-dev dovecot-imapd dovecot-lmtpd python3 python3-dissononce iproute2 procps systemd"
PKGS="$BUILD $TEST"

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "mailmesh: missing Debian packages:$missing" >&2
	echo "mailmesh: run as root: apt-get install -y$missing" >&2
	exit 1
fi
echo "mailmesh: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Dovecot's packages try to start the system service; the tests start their own.
apt-get install -y -qq --no-install-recommends $missing >/dev/null
