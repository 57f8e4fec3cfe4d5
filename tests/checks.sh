# checks.sh — what the shell integration tests share (sourced, not run: tests/run.sh
# runs only it_*.sh): a temporary directory $T removed on any exit, and counted checks
# ending in the `N passed, N failed` line tests/run.sh reads.  Set TMP_PREFIX (the
# directory's name) first: a sourced file takes no arguments in POSIX sh.
T=$(mktemp -d "/tmp/$TMP_PREFIX.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT INT TERM HUP
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok   $1"; }
# a failed check shows what the command under test printed on stderr ($T/err)
bad() { failed=$((failed + 1)); echo "FAIL $1"; [ -s "$T/err" ] && sed 's/^/     | /' "$T/err"; }
# check NAME COMMAND...: the command must succeed.
check() { name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
# the closing line, and the script's exit status
checks_done() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; }
