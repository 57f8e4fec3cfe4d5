#!/bin/sh
# fuzz-run.sh SECONDS FUZZER... — runs each built libFuzzer binary for SECONDS on a copy
# of its seed corpus tests/corpus/<fuzzer name>/ (in a temporary directory removed at
# exit), with crash artifacts kept there too; fails (exit 1) if any fuzzer reports a
# finding or cannot run.  Used by `make fuzz-run` (CI).  FUZZ_JOBS fuzzers run at a
# time (default: the number of CPUs): each is one process on one core, and they run
# for a fixed time, so running them side by side costs none of their runs.
set -u
if [ $# -lt 2 ]; then
	echo "usage: fuzz-run.sh SECONDS FUZZER..." >&2
	exit 2
fi
secs=$1
shift
jobs=${FUZZ_JOBS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)}
case "$jobs" in '' | *[!0-9]* | 0) jobs=1 ;; esac
TOP=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM HUP
bad=""
nok=0
nbad=0

# One fuzzer in the background; its verdict goes to $TMP/<name>/rc.
start() {
	fz=$1
	name=$(basename "$fz")
	mkdir -p "$TMP/$name/corpus" "$TMP/$name/artifacts"
	if [ ! -x "$fz" ]; then
		echo "$fz not built" >"$TMP/$name/log"
		echo 127 >"$TMP/$name/rc"
		return
	fi
	if [ -d "$TOP/tests/corpus/$name" ]; then
		cp -R "$TOP/tests/corpus/$name/." "$TMP/$name/corpus/"
	fi
	( "$fz" -max_total_time="$secs" -max_len=4096 -artifact_prefix="$TMP/$name/artifacts/" \
		"$TMP/$name/corpus" >"$TMP/$name/log" 2>&1
	  echo $? >"$TMP/$name/rc" ) &
}

# The verdict of one fuzzer that has ended.
report() {
	name=$(basename "$1")
	rc=$(cat "$TMP/$name/rc" 2>/dev/null || echo 1)
	runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$TMP/$name/log" | tail -n 1)
	if [ "$rc" -eq 127 ]; then
		echo "FAIL $name: $(cat "$TMP/$name/log")"
		bad="$bad $name"
		nbad=$((nbad + 1))
	elif [ "$rc" -ne 0 ] || [ -n "$(ls -A "$TMP/$name/artifacts")" ]; then
		echo "FAIL $name (exit $rc): finding"
		tail -n 40 "$TMP/$name/log"
		bad="$bad $name"
		nbad=$((nbad + 1))
	else
		echo "ok   $name: ${runs:-?} runs in ${secs}s, no finding"
		nok=$((nok + 1))
	fi
}

# batches of `jobs` fuzzers (all run for the same time, so a batch ends together)
while [ $# -gt 0 ]; do
	batch=""
	i=0
	while [ $# -gt 0 ] && [ $i -lt "$jobs" ]; do
		start "$1"
		batch="$batch $1"
		i=$((i + 1))
		shift
	done
	wait
	for fz in $batch; do
		report "$fz"
	done
done
echo "fuzz: $nok passed, $nbad failed"
if [ -n "$bad" ]; then
	echo "fuzz findings:$bad"
	exit 1
fi
exit 0
