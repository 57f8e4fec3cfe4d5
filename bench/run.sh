#!/bin/sh
# bench/run.sh — `make bench`: mailmesh's benchmarks beside Dovecot (issue 6).
# Builds the helper programs (tests/tool_bench_*.c -> $BUILD/tests/bench_*) with the
# Makefile's own rules, then runs bench/bench.py, which sets everything up on loopback
# (mailmesh testnets, private Dovecot instances), prints one table of mailmesh beside its
# anchors and writes it with the machine description to bench/results/.
# Environment: BUILD (build dir, default build), BENCH_QUICK=1 (3-minute smoke run with
# small counts), BENCH_ONLY=1,2,3,4,5,6 (some items only), BENCH_KEEP=1 (keep the
# temporary directory), BENCH_OUT=FILE (results file), BENCH_SAVE_LOGS=PREFIX (item 1
# keeps its nodes' logs), BENCH_WRAP_NODEn=CMD (runs node n under CMD, e.g. perf),
# BENCH_LOG_LEVEL=debug (the nodes' log level), BENCH_ITEM1_ROUNDS=N (item 1's rounds; 3).
# Needs root (Dovecot).
# Ports 28000-28199.
set -eu
TOP=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
cd "$TOP"
for pkg in dovecot-core dovecot-lmtpd; do
	if ! dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
		echo "bench: Debian package $pkg is missing: apt-get install dovecot-core dovecot-imapd dovecot-lmtpd" >&2
		exit 1
	fi
done
make --no-print-directory BUILD="$BUILD" "$BUILD/mailmesh" "$BUILD/tests/bench_mkmail" "$BUILD/tests/bench_recon" \
	"$BUILD/tests/bench_crypto"
CMD="make bench"
[ "${BENCH_QUICK:-0}" = 1 ] && CMD="BENCH_QUICK=1 make bench"
[ -n "${BENCH_ONLY:-}" ] && CMD="BENCH_ONLY=$BENCH_ONLY $CMD"
# Everything runs in one temporary directory; whatever way the run ends, any Dovecot
# master started there is stopped and the directory removed (the daemons die with
# bench.py: PR_SET_PDEATHSIG).
BENCH_DIR=$(mktemp -d /tmp/mailmesh-bench.XXXXXX)
PY=""
cleanup() {
	[ -n "$PY" ] && kill "$PY" 2>/dev/null && wait "$PY" 2>/dev/null
	for pidf in "$BENCH_DIR"/dovecot-*/run/master.pid "$BENCH_DIR"/*jfs/dovecot-*/run/master.pid; do
		[ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null
	done
	sleep 1
	# item 1's loop images, if the run ended inside one
	for m in jfs njfs; do
		# (lazily if a straggler, e.g. a node under BENCH_WRAP_NODEn, still uses it)
		mountpoint -q "$BENCH_DIR/$m" && { umount "$BENCH_DIR/$m" || umount -l "$BENCH_DIR/$m"; }
	done
	if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "kept $BENCH_DIR"; else rm -rf "$BENCH_DIR"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
export BENCH_DIR BENCH_CMD="${BENCH_CMD:-$CMD}" MAILMESH_TOP="$TOP" BUILD="$BUILD"
/usr/bin/python3 "$TOP/bench/bench.py" &
PY=$!
wait "$PY"
rc=$?
PY=""
exit $rc
