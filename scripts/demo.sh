#!/bin/sh
# make demo: a real 3-node mailmesh cluster on loopback doing the main job.
# Writes a testnet in a temporary directory, starts three daemons, delivers sample
# messages into node 1's Maildir (as an MDA does: tmp/ then new/), marks messages read
# and flagged on node 2 (renames in cur/, as Dovecot does), expunges one on node 3
# (unlink), and shows that all three converge: each node's status, identical roots,
# identical Maildirs.  Then a fourth server joins the running cluster: its line goes
# into the peers file, the three reload it (SIGHUP, as `systemctl reload mailmesh`
# sends) and the new node fetches everything.  Stops the daemons cleanly and removes
# everything it made.  Ports 26000-26003.  KEEP=1 keeps the directory for a look around.
set -eu
TOP=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
MM="$TOP/$BUILD/mailmesh"
DIR=$(mktemp -d /tmp/mailmesh-demo.XXXXXX)
PIDS=""

cleanup() {
	for p in $PIDS; do kill "$p" 2>/dev/null || true; done
	for p in $PIDS; do wait "$p" 2>/dev/null || true; done
	if [ "${KEEP:-0}" = 1 ]; then echo "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Polls until the command succeeds, for at most $1 seconds.
wait_for() {
	limit=$1; shift
	i=0
	while ! "$@" >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -gt $((limit * 100)) ] && return 1
		sleep 0.01
	done
}

root_of() { "$MM" status -c "$DIR/node$1/mailmesh.conf" --json | grep -o '"root":"[0-9a-f]*"' | head -n 1 | cut -d'"' -f4; }
missing_of() { "$MM" status -c "$DIR/node$1/mailmesh.conf" --json | sed -n 's/.*"missing_bodies":\([0-9]*\).*/\1/p'; }
count_msgs() { find "$DIR/node$1/mail/example.org/alice" -path '*/cur/*' -type f -o -path '*/new/*' -type f 2>/dev/null | wc -l; }
inbox() { echo "$DIR/node$1/mail/example.org/alice"; }
converged() {
	r1=$(root_of 1); r2=$(root_of 2); r3=$(root_of 3)
	[ -n "$r1" ] && [ "$r1" = "$r2" ] && [ "$r2" = "$r3" ] &&
		[ "$(missing_of 1)$(missing_of 2)$(missing_of 3)" = 000 ] &&
		[ "$(listing 1)" = "$(listing 2)" ] && [ "$(listing 2)" = "$(listing 3)" ]
}
# Maildir content of a node, independent of file names: body hash, flags, mtime.
listing() {
	for f in $(find "$(inbox "$1")" -path '*/cur/*' -type f -o -path '*/new/*' -type f | sort); do
		flags=$(basename "$f" | sed -n 's/.*:2,\(.*\)/\1/p')
		echo "$(sha256sum < "$f" | cut -c1-12) flags=${flags:--} mtime=$(stat -c %Y "$f")"
	done | sort
}

say "1. A 3-node test cluster on loopback (mailmesh testnet)"
# four nodes are made; the fourth stays out of the peers file until step 7
"$MM" testnet --nodes 4 --dir "$DIR" --base-port 26000 >/dev/null
grep '^node4 ' "$DIR/peers" > "$DIR/node4.line"
grep -v '^node4 ' "$DIR/peers" > "$DIR/peers.new" && mv "$DIR/peers.new" "$DIR/peers"
echo "   the peers file every node shares (names, addresses, public keys):"
grep -v '^#' "$DIR/peers" | sed 's/^/     /'

say "2. Start the three daemons (Noise IK over TCP+UDP, mutually authenticated)"
for i in 1 2 3; do
	"$MM" run -c "$DIR/node$i/mailmesh.conf" 2>"$DIR/node$i.log" &
	PIDS="$PIDS $!"
done
for i in 1 2 3; do
	wait_for 20 "$MM" status -c "$DIR/node$i/mailmesh.conf" || { echo "node$i did not start:"; cat "$DIR/node$i.log"; exit 1; }
done
wait_for 20 sh -c "'$MM' status -c '$DIR/node1/mailmesh.conf' | grep -c connected | grep -q 2"
"$MM" status -c "$DIR/node1/mailmesh.conf" | sed 's/^/   /'

say "3. Create alice@example.org's Maildir on node 1, then deliver 5 messages into it (tmp/ -> new/)"
md=$(inbox 1)
start=$(date +%s%N)
mkdir -p "$md/tmp" "$md/new" "$md/cur"
# A new folder waits up to a second for Dovecot to write its UIDVALIDITY (there is no
# Dovecot in this demo), then every node has it.
wait_for 20 test -d "$(inbox 2)/cur" -a -d "$(inbox 3)/cur" ||
	{ echo "the new Maildir did not replicate; logs:"; tail -n 20 "$DIR"/node*.log; exit 1; }
echo "   the new Maildir is on nodes 2 and 3 after $(( ($(date +%s%N) - start) / 1000000 )) ms" \
     "(a new folder waits up to 1 s for Dovecot's UIDVALIDITY)"
start=$(date +%s%N)
for i in 1 2 3 4 5; do
	name="$(date +%s).M${i}P$$.demo"
	printf 'From: bob@example.net\r\nTo: alice@example.org\r\nSubject: demo message %s\r\n\r\nHello Alice, this is message %s.\r\n' "$i" "$i" > "$md/tmp/$name"
	touch -d "2026-11-0$i 12:00:00" "$md/tmp/$name"
	mv "$md/tmp/$name" "$md/new/$name"
done
wait_for 20 sh -c "[ \$(find '$(inbox 2)' '$(inbox 3)' -path '*/new/*' -type f | wc -l) -eq 10 ]" ||
	{ echo "replication did not happen; logs:"; tail -n 20 "$DIR"/node*.log; exit 1; }
echo "   all 5 messages are on nodes 2 and 3 $(( ($(date +%s%N) - start) / 1000000 )) ms after the first delivery" \
     "(this script looks every 10 ms):"
ls -1 "$(inbox 2)/new" | sed 's/^/     node2 new\//'

say "4. On node 2, mark message 1 read and message 2 flagged (Maildir renames, as Dovecot does)"
cd "$(inbox 2)"
m1=$(grep -l 'message 1\.' new/* | head -n 1); m2=$(grep -l 'message 2\.' new/* | head -n 1)
mv "$m1" "cur/$(basename "$m1"):2,S"
mv "$m2" "cur/$(basename "$m2"):2,F"
cd "$TOP"

say "5. On node 3, expunge message 3 (unlink)"
wait_for 20 sh -c "ls '$(inbox 3)/cur' | grep -q ':2,S'"
m3=$(grep -l 'message 3\.' "$(inbox 3)"/new/* "$(inbox 3)"/cur/* 2>/dev/null | head -n 1)
rm "$m3"

say "6. All three converge"
if ! wait_for 30 converged; then
	echo "   the nodes did not converge; logs:"; tail -n 20 "$DIR"/node*.log; exit 1
fi
for i in 1 2 3; do
	echo "   node$i: $(count_msgs "$i") messages, root $(root_of "$i" | cut -c1-32)"
done
echo "   node 1's Maildir (message 3 gone everywhere; flags S and F everywhere; dates kept):"
listing 1 | sed 's/^/     /'
echo "   node 3's status:"
"$MM" status -c "$DIR/node3/mailmesh.conf" | sed 's/^/     /'

say "7. A fourth server joins the running cluster (peers file + SIGHUP, no restart)"
cat "$DIR/node4.line" >> "$DIR/peers"
echo "   its line, added to the peers file:"
sed 's/^/     /' "$DIR/node4.line"
start=$(date +%s%N)
for p in $PIDS; do kill -HUP "$p"; done
"$MM" run -c "$DIR/node4/mailmesh.conf" 2>"$DIR/node4.log" &
PIDS="$PIDS $!"
joined() {
	[ "$(root_of 4)" = "$(root_of 1)" ] && [ "$(missing_of 4)" = 0 ] && [ "$(listing 4)" = "$(listing 1)" ]
}
if ! wait_for 30 joined; then
	echo "   node 4 did not catch up; logs:"; tail -n 20 "$DIR"/node*.log; exit 1
fi
echo "   node 4 holds the same $(count_msgs 4) messages $(( ($(date +%s%N) - start) / 1000000 )) ms after the reload;" \
     "node 1's log says:"
grep 'reloaded' "$DIR/node1.log" | sed 's/^/     /'
# (its view of each peer is brought up to date by the next digests, within a second)
wait_for 10 sh -c "! '$MM' status -c '$DIR/node4/mailmesh.conf' | grep -q differs" || true
echo "   node 4's status:"
"$MM" status -c "$DIR/node4/mailmesh.conf" | sed 's/^/     /'
echo "   what a monitoring system gets from each (mailmesh check: exit 0 = OK):"
for n in 1 2 3 4; do # (not i: wait_for counts in it)
	wait_for 5 "$MM" check -c "$DIR/node$n/mailmesh.conf" --max-lag 5 || true
	rc=0; line=$("$MM" check -c "$DIR/node$n/mailmesh.conf" --max-lag 5) || rc=$?
	echo "     node$n (exit $rc): $line"
done

say "8. Stop the daemons (SIGTERM: clean shutdown)"
status=0
for p in $PIDS; do
	kill -TERM "$p"
	wait "$p" || status=$?
done
PIDS=""
[ $status -eq 0 ] || { echo "   a daemon exited with status $status"; exit 1; }
echo "   all four stopped cleanly."
echo
echo "Demo finished: the servers hold the same mail, changes made on any of them reached all,"
echo "and a server added to the running cluster got all of it."
