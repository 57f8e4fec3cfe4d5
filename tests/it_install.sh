#!/bin/sh
# it_install.sh — `make install` into a DESTDIR with a PREFIX of its own: the binary
# runs from there, the docs and example files are in place, and the systemd unit names
# this PREFIX and passes `systemd-analyze verify` (with no warning: an unknown key, a
# bad value or a missing command is printed, so any output fails).  Writes only under
# its own temporary directory; listens on nothing.  Prints `N passed, N failed`.
set -u
TOP=${MAILMESH_TOP:-$(cd "$(dirname "$0")/.." && pwd)}
BUILD=${BUILD:-build}
TMP_PREFIX=mm-it-install
. "$(dirname "$0")/checks.sh"

R="$T/root"
P=/opt/mailmesh-test
if make -C "$TOP" --no-print-directory BUILD="$BUILD" SANITIZE="${SANITIZE:-0}" DESTDIR="$R" PREFIX="$P" \
	install >"$T/out" 2>"$T/err"; then
	ok "make install DESTDIR=... PREFIX=$P exits 0"
else
	bad "make install DESTDIR=... PREFIX=$P exits 0"
fi
: >"$T/err"
B="$R$P/bin/mailmesh"
check "the binary is installed, mode 755" [ "$(stat -c %a "$B" 2>/dev/null)" = 755 ]
k=$("$B" genkey 2>"$T/err")
check "the installed binary runs (genkey)" [ ${#k} -eq 44 ]
D="$R$P/share/doc/mailmesh"
check "README and docs are installed" test -f "$D/README.md" -a -f "$D/configuration.md"
check "the example config and peers files are installed" \
	test -f "$D/examples/mailmesh.conf.example" -a -f "$D/examples/peers.example"

U="$R$P/lib/systemd/system/mailmesh.service"
check "the systemd unit is installed under PREFIX/lib/systemd/system, mode 644" \
	[ "$(stat -c %a "$U" 2>/dev/null)" = 644 ]
if [ -f "$U" ] && ! grep -q @ "$U"; then ok "the unit has no placeholder left"; else bad "the unit has no placeholder left"; fi
check "the unit runs PREFIX's binary on /etc/mailmesh/mailmesh.conf" \
	grep -qx "ExecStart=$P/bin/mailmesh run -c /etc/mailmesh/mailmesh.conf" "$U"
check "the unit checks the config first" \
	grep -qx "ExecStartPre=$P/bin/mailmesh check-config -c /etc/mailmesh/mailmesh.conf" "$U"

# systemd-analyze verify wants the commands to exist where the unit says: a copy names
# the binary under DESTDIR
if command -v systemd-analyze >/dev/null 2>&1; then
	sed "s|$P/bin/mailmesh|$B|g" "$U" >"$T/mailmesh.service"
	systemd-analyze verify "$T/mailmesh.service" >"$T/err" 2>&1
	rc=$?
	if [ $rc -eq 0 ] && [ ! -s "$T/err" ]; then
		ok "systemd-analyze verify accepts the unit, without a warning"
	else
		bad "systemd-analyze verify accepts the unit, without a warning (exit $rc)"
	fi
else
	echo "systemd-analyze not found (Debian package systemd; scripts/deps.sh installs it)" >"$T/err"
	bad "systemd-analyze verify accepts the unit"
fi
checks_done
