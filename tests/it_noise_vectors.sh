#!/bin/sh
# it_noise_vectors.sh — runs build/tests/noise-vectors on the shared Noise vectors
# (must be 59 passed, 0 failed), then on files made by mutating one vector (a handshake
# ciphertext, a transport ciphertext, a handshake hash: each must fail, naming the
# protocol), a file with one vector of another suite (skipped) and a broken file, so
# the runner is proven able to fail.  Prints `N passed, N failed` over these checks.
set -u
TOP=${MAILMESH_TOP:-$(cd "$(dirname "$0")/.." && pwd)}
BUILD=${BUILD:-build}
case "$BUILD" in /*) B=$BUILD ;; *) B=$TOP/$BUILD ;; esac
NV=$B/tests/noise-vectors
SHARED=$TOP/../shared/vectors/noise
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM HUP
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
ko() { fail=$((fail + 1)); echo "FAIL $1"; }

if [ ! -x "$NV" ]; then
	echo "FAIL $NV not built"
	echo "0 passed, 1 failed"
	exit 1
fi
set -- "$SHARED"/*.json
if [ ! -e "$1" ]; then
	echo "FAIL no vector files in $SHARED"
	echo "0 passed, 1 failed"
	exit 1
fi
FILE=$SHARED/cacophony_25519_ChaChaPoly_BLAKE2b.json

# 1. the shared vectors: 59 of 59
"$NV" "$SHARED"/*.json >"$TMP/out" 2>&1
rc=$?
if [ $rc -eq 0 ] && grep -qx '59 passed, 0 failed' "$TMP/out"; then ok "shared vectors: 59 passed"
else ko "shared vectors (exit $rc): $(tail -n 3 "$TMP/out" | tr '\n' ' ')"; fi

# mutate FIELD occurrence N (1-based) in the file: flip the first hex digit of its value
mutate() { # field n out
	awk -v f="\"$1\": \"" -v want="$2" '
	{ p = index($0, f)
	  if (p > 0) { seen++
	    if (seen == want) { i = p + length(f); c = substr($0, i, 1)
	      r = (c == "0") ? "1" : "0"; $0 = substr($0, 1, i - 1) r substr($0, i + 1) } }
	  print }' "$FILE" >"$3"
	! cmp -s "$FILE" "$3"
}

expect_fail() { # name file
	"$NV" "$2" >"$TMP/out" 2>&1
	rc=$?
	if [ $rc -eq 1 ] && grep -q '^FAIL Noise_NN_25519_ChaChaPoly_BLAKE2b' "$TMP/out" &&
	   grep -qx '58 passed, 1 failed' "$TMP/out"; then ok "$1 detected"
	else ko "$1 not detected (exit $rc): $(tail -n 3 "$TMP/out" | tr '\n' ' ')"; fi
}

# 2. first handshake ciphertext of the first vector (NN message 1)
mutate ciphertext 1 "$TMP/m1.json" && expect_fail "mutated handshake ciphertext" "$TMP/m1.json"
# 3. a transport ciphertext (NN message 3, after Split())
mutate ciphertext 3 "$TMP/m3.json" && expect_fail "mutated transport ciphertext" "$TMP/m3.json"
# 4. the handshake hash of the first vector
mutate handshake_hash 1 "$TMP/hh.json" && expect_fail "mutated handshake hash" "$TMP/hh.json"
# 5. a payload (the expected plaintext) of the first vector's last message
mutate payload 6 "$TMP/p6.json" && expect_fail "mutated transport payload" "$TMP/p6.json"

# 6. another suite is skipped, not failed
sed '0,/Noise_NN_25519_ChaChaPoly_BLAKE2b/s//Noise_NN_25519_AESGCM_SHA256/' "$FILE" >"$TMP/other.json"
"$NV" "$TMP/other.json" >"$TMP/out" 2>&1
rc=$?
if [ $rc -eq 0 ] && grep -qx '58 passed, 0 failed' "$TMP/out" && grep -q '^1 skipped' "$TMP/out"; then ok "other suite skipped"
else ko "other suite (exit $rc): $(tail -n 3 "$TMP/out" | tr '\n' ' ')"; fi

# 7. a truncated (broken) file is an error, not a pass
head -c 5000 "$FILE" >"$TMP/broken.json"
"$NV" "$TMP/broken.json" >"$TMP/out" 2>&1
rc=$?
if [ $rc -ne 0 ]; then ok "broken file refused (exit $rc)"; else ko "broken file accepted"; fi

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
