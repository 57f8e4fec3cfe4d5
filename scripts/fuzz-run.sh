#!/bin/sh
# fuzz-run.sh SECONDS FUZZER... — runs each built libFuzzer binary for SECONDS on a copy
# of its seed corpus tests/corpus/<fuzzer name>/ (in a temporary directory removed at
# exit), with crash artifacts kept there too; fails (exit 1) if any fuzzer reports a
# finding or cannot run.  Used by `make fuzz-run` (CI).
set -u
if [ $# -lt 2 ]; then
	echo "usage: fuzz-run.sh SECONDS FUZZER..." >&2
	exit 2
fi
secs=$1
shift
TOP=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM HUP
bad=""
nok=0
nbad=0
for fz in "$@"; do
	name=$(basename "$fz")
	if [ ! -x "$fz" ]; then
		echo "FAIL $name: $fz not built"
		bad="$bad $name"
		continue
	fi
	mkdir -p "$TMP/$name/corpus" "$TMP/$name/artifacts"
	if [ -d "$TOP/tests/corpus/$name" ]; then
		cp -R "$TOP/tests/corpus/$name/." "$TMP/$name/corpus/"
	fi
	"$fz" -max_total_time="$secs" -max_len=4096 -artifact_prefix="$TMP/$name/artifacts/" \
		"$TMP/$name/corpus" >"$TMP/$name/log" 2>&1
	rc=$?
	runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$TMP/$name/log" | tail -n 1)
	if [ $rc -ne 0 ] || [ -n "$(ls -A "$TMP/$name/artifacts")" ]; then
		echo "FAIL $name (exit $rc): finding"
		tail -n 40 "$TMP/$name/log"
		bad="$bad $name"
		nbad=$((nbad + 1))
	else
		echo "ok   $name: ${runs:-?} runs in ${secs}s, no finding"
		nok=$((nok + 1))
	fi
done
echo "fuzz: $nok passed, $nbad failed"
if [ -n "$bad" ]; then
	echo "fuzz findings:$bad"
	exit 1
fi
exit 0
