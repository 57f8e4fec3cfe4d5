#!/bin/sh
# it_cli.sh — the key, config and testnet commands of the real `mailmesh` binary:
# genkey/pubkey round trip (and RFC 7748's test key), 0600 key files and the refusal to
# overwrite one, the permission check on load, check-config's exit codes and messages
# for good and bad configs and peers files, a testnet whose every node passes
# check-config, and `reload`'s and `remove-user`'s usage and their message when no daemon runs.  Every command names an argument it does not take, and prints its usage for --help (exit 0).  Nothing listens: ports 24000-24099 only appear in generated configs.
# Prints `N passed, N failed`.
set -u
MAILMESH=${MAILMESH:-build/mailmesh}
case "$MAILMESH" in /*) ;; *) MAILMESH="$(pwd)/$MAILMESH" ;; esac
TMP_PREFIX=mm-it-cli
. "$(dirname "$0")/checks.sh"
# run EXPECTED_EXIT CMD...: runs with stdout in $T/out, stderr in $T/err; true if the
# exit status is EXPECTED_EXIT.
run() { want=$1; shift; "$@" >"$T/out" 2>"$T/err"; rc=$?; [ "$rc" -eq "$want" ]; }
has() { grep -qF -- "$2" "$T/$1"; }
mode() { stat -c %a "$1"; }
is_b64key() { printf '%s' "$1" | grep -qE '^[A-Za-z0-9+/]{43}=$'; }

# ---- genkey / pubkey ----------------------------------------------------------------
k1=$("$MAILMESH" genkey) && k2=$("$MAILMESH" genkey)
check "genkey prints a 44-character base64 key" is_b64key "$k1"
check "two genkeys differ" [ "$k1" != "$k2" ]
p1=$(printf '%s\n' "$k1" | "$MAILMESH" pubkey)
p1b=$(printf '%s' "$k1" | "$MAILMESH" pubkey)
check "pubkey prints a 44-character base64 key" is_b64key "$p1"
check "pubkey is deterministic (with or without newline)" [ "$p1" = "$p1b" ]
check "pubkey differs from the private key" [ "$p1" != "$k1" ]
rfc=$(echo "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=" | "$MAILMESH" pubkey)
check "pubkey of RFC 7748 Alice's key" [ "$rfc" = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=" ]

if run 0 "$MAILMESH" genkey -o "$T/a.key" && [ ! -s "$T/out" ]; then ok "genkey -o exits 0 and prints nothing"; else bad "genkey -o exits 0 and prints nothing"; fi
check "genkey -o writes mode 0600" [ "$(mode "$T/a.key")" = 600 ]
ka=$(cat "$T/a.key")
check "genkey -o writes one base64 key line" is_b64key "$ka"
pa=$("$MAILMESH" pubkey <"$T/a.key")
check "pubkey reads a key file" is_b64key "$pa"
(umask 0; "$MAILMESH" genkey -o "$T/u.key")
check "genkey -o is 0600 even with umask 0" [ "$(mode "$T/u.key")" = 600 ]

if run 2 "$MAILMESH" genkey -o "$T/a.key" && has err "use --force"; then ok "genkey -o refuses an existing file (exit 2)"; else bad "genkey -o refuses an existing file (exit 2)"; fi
check "refused genkey left the key unchanged" [ "$(cat "$T/a.key")" = "$ka" ]
run 0 "$MAILMESH" genkey -o "$T/a.key" --force
check "genkey --force replaces the key" [ "$(cat "$T/a.key")" != "$ka" ]
check "replaced key is still 0600" [ "$(mode "$T/a.key")" = 600 ]

if echo "not-a-key" | run 2 "$MAILMESH" pubkey && has err "not a private key"; then ok "pubkey rejects garbage (exit 2)"; else bad "pubkey rejects garbage (exit 2)"; fi
if run 2 "$MAILMESH" pubkey </dev/null; then ok "pubkey rejects empty input"; else bad "pubkey rejects empty input"; fi
if run 2 "$MAILMESH" genkey --bogus; then ok "genkey rejects unknown options"; else bad "genkey rejects unknown options"; fi

# ---- testnet ------------------------------------------------------------------------
D="$T/net"
if run 0 "$MAILMESH" testnet --nodes 3 --dir "$D" --base-port 24000; then ok "testnet --nodes 3 exits 0"; else bad "testnet --nodes 3 exits 0"; fi
cp "$T/out" "$T/testnet.out"
for i in 1 2 3; do
	n="node$i"
	check "testnet prints how to start $n" grep -qF "mailmesh run -c $D/$n/mailmesh.conf" "$T/testnet.out"
	if [ -f "$D/$n/mailmesh.conf" ] && [ -d "$D/$n/mail" ] && [ -d "$D/$n/state" ]; then ok "testnet wrote $n's files"; else bad "testnet wrote $n's files"; fi
	check "$n's private.key is 0600" [ "$(mode "$D/$n/private.key")" = 600 ]
	if run 0 "$MAILMESH" check-config -c "$D/$n/mailmesh.conf" && has out "name:           $n" &&
	   has out "127.0.0.1:$((24000 + i - 1))" && has out "mail_location:  $D/$n/mail/%d/%n" &&
	   has out "peers:          2 in $D/peers" && has out "control_socket: $D/$n/state/control.sock"; then
		ok "check-config passes for $n"
	else
		bad "check-config passes for $n"; cat "$T/out"
	fi
	pub=$("$MAILMESH" pubkey <"$D/$n/private.key")
	check "$n's key is on its line of the peers file" grep -qxF "$n 127.0.0.1:$((24000 + i - 1)) $pub" "$D/peers"
	check "check-config shows $n's public key" grep -qF "public key:     $pub" "$T/out"
done
check "peers file has 3 peers" [ "$(grep -vc '^#' "$D/peers")" -eq 3 ]
if run 2 "$MAILMESH" testnet --nodes 3 --dir "$D" && has err "not empty"; then ok "testnet refuses a non-empty dir (exit 2)"; else bad "testnet refuses a non-empty dir (exit 2)"; fi
old=$(cat "$D/node1/private.key")
if run 0 "$MAILMESH" testnet --nodes 2 --dir "$D" --base-port 24010 --force; then ok "testnet --force writes over a dir"; else bad "testnet --force writes over a dir"; fi
check "testnet --force made new keys" [ "$(cat "$D/node1/private.key")" != "$old" ]
if run 0 "$MAILMESH" check-config -c "$D/node2/mailmesh.conf" && has out "127.0.0.1:24011"; then ok "check-config passes after --force"; else bad "check-config passes after --force"; fi
if run 2 "$MAILMESH" testnet --nodes 0 --dir "$T/n0"; then ok "testnet rejects --nodes 0"; else bad "testnet rejects --nodes 0"; fi
if run 2 "$MAILMESH" testnet --nodes 2 --dir "$T/n1" --base-port 65535 && has err "65536"; then ok "testnet rejects ports past 65535"; else bad "testnet rejects ports past 65535"; fi
if run 2 "$MAILMESH" testnet --nodes 2; then ok "testnet requires --dir"; else bad "testnet requires --dir"; fi

# ---- check-config errors ------------------------------------------------------------
C="$D/node1/mailmesh.conf"
chmod 644 "$D/node1/private.key"
if run 2 "$MAILMESH" check-config -c "$C" && has err "chmod 600 $D/node1/private.key"; then ok "key readable by others: refused, says chmod 600 (exit 2)"; else bad "key readable by others: refused, says chmod 600 (exit 2)"; fi
chmod 600 "$D/node1/private.key"

cp "$C" "$T/c1.conf"
echo "colour = blue" >>"$T/c1.conf"
line=$(wc -l <"$T/c1.conf")
if run 2 "$MAILMESH" check-config -c "$T/c1.conf" && has err "$T/c1.conf:$line: unknown key 'colour'"; then ok "unknown key: FILE:LINE (exit 2)"; else bad "unknown key: FILE:LINE (exit 2)"; fi

sed 's/^listen = .*/listen = 127.0.0.1/' "$C" >"$T/c2.conf"
line=$(grep -n '^listen' "$T/c2.conf" | cut -d: -f1)
if run 2 "$MAILMESH" check-config -c "$T/c2.conf" && has err "$T/c2.conf:$line: bad listen address"; then ok "bad listen: FILE:LINE (exit 2)"; else bad "bad listen: FILE:LINE (exit 2)"; fi

cp "$D/peers" "$T/peers.bad"
echo "node9 127.0.0.1 AAAA" >>"$T/peers.bad"
line=$(wc -l <"$T/peers.bad")
sed "s|^peers = .*|peers = $T/peers.bad|" "$C" >"$T/c3.conf"
if run 2 "$MAILMESH" check-config -c "$T/c3.conf" && has err "$T/peers.bad:$line: bad address"; then ok "bad peers line: PEERS:LINE (exit 2)"; else bad "bad peers line: PEERS:LINE (exit 2)"; fi

cp "$D/peers" "$T/peers.dup"
grep '^node2 ' "$D/peers" | sed 's/^node2/node7/' >>"$T/peers.dup"
sed "s|^peers = .*|peers = $T/peers.dup|" "$C" >"$T/c4.conf"
if run 2 "$MAILMESH" check-config -c "$T/c4.conf" && has err "duplicate public key"; then ok "duplicate key in peers (exit 2)"; else bad "duplicate key in peers (exit 2)"; fi

sed "s|^private_key = .*|private_key = $T/a.key|" "$C" >"$T/c5.conf"
if run 2 "$MAILMESH" check-config -c "$T/c5.conf" && has err "peer 'node1' has a different public key"; then ok "own name with another key (exit 2)"; else bad "own name with another key (exit 2)"; fi

grep -v '^node1 ' "$D/peers" >"$T/peers.noself"
sed "s|^peers = .*|peers = $T/peers.noself|" "$C" >"$T/c6.conf"
if run 0 "$MAILMESH" check-config -c "$T/c6.conf" && has err "warning: this node's public key" && has out "peers:          1 in"; then ok "own key not listed: warning, exit 0"; else bad "own key not listed: warning, exit 0"; fi

# Started as root (the systemd unit) without `user`, the daemon would make root's Maildirs.
if [ "$(id -u)" -eq 0 ]; then
	if run 0 "$MAILMESH" check-config -c "$C" && has err "sets no \`user\`" && has err "user = vmail"; then ok "as root without user: warning, exit 0"; else bad "as root without user: warning, exit 0"; fi
	cp "$C" "$T/c7.conf"; echo "user = root" >>"$T/c7.conf"
	if run 0 "$MAILMESH" check-config -c "$T/c7.conf" && ! has err "sets no"; then ok "with user: no such warning"; else bad "with user: no such warning"; fi
fi
if run 2 "$MAILMESH" check-config -c "$T/missing.conf" && has err "missing.conf: cannot open"; then ok "missing config (exit 2)"; else bad "missing config (exit 2)"; fi
# reload: usage, and no daemon to ask (the testnet's own control socket is not there)
if run 2 "$MAILMESH" reload && has err "usage: mailmesh reload -c FILE"; then ok "reload without -c: usage (exit 2)"; else bad "reload without -c: usage (exit 2)"; fi
if run 1 "$MAILMESH" reload -c "$C" && has err "the daemon is not running"; then ok "reload with no daemon running: says so (exit 1)"; else bad "reload with no daemon running: says so (exit 1)"; fi
# remove-user: usage, a name that is not one, no daemon to ask
if run 2 "$MAILMESH" remove-user -c "$C" && has err "usage: mailmesh remove-user -c FILE USER [--yes]"; then ok "remove-user without a user: usage (exit 2)"; else bad "remove-user without a user: usage (exit 2)"; fi
if run 2 "$MAILMESH" remove-user -c "$C" "example.org/a b" --yes && has err "is not a user name"; then ok "remove-user of a name with a space: refused (exit 2)"; else bad "remove-user of a name with a space: refused (exit 2)"; fi
if run 1 "$MAILMESH" remove-user -c "$C" example.org/alice --yes && has err "the daemon is not running"; then ok "remove-user with no daemon running: says so (exit 1)"; else bad "remove-user with no daemon running: says so (exit 1)"; fi
if run 2 "$MAILMESH" check-config && has err "usage"; then ok "check-config without -c: usage (exit 2)"; else bad "check-config without -c: usage (exit 2)"; fi
# A wrong argument is named, not just answered with the usage; --help is not an error.
for cmd in run status reload check-config; do
	if run 2 "$MAILMESH" $cmd -c "$C" --bogus && has err "mailmesh $cmd: unknown argument '--bogus'" && has err "usage: mailmesh $cmd"; then
		ok "$cmd names an unknown argument (exit 2)"; else bad "$cmd names an unknown argument (exit 2)"; fi
done
for cmd in run status reload remove-user check-config genkey pubkey testnet; do
	if run 0 "$MAILMESH" $cmd --help && has out "usage: mailmesh $cmd"; then
		ok "$cmd --help: usage on stdout (exit 0)"; else bad "$cmd --help: usage on stdout (exit 0)"; fi
done
if run 2 "$MAILMESH" remove-user -c "$C" example.org/alice --force && has err "unknown argument '--force'"; then ok "remove-user names an unknown argument (exit 2)"; else bad "remove-user names an unknown argument (exit 2)"; fi
if run 3 "$MAILMESH" check -c "$C" --bogus && has out "UNKNOWN: unknown argument '--bogus'"; then ok "check names an unknown argument (UNKNOWN, exit 3)"; else bad "check names an unknown argument (UNKNOWN, exit 3)"; fi
if run 2 "$MAILMESH" run -c && has err "a FILE must follow '-c'"; then ok "run -c without a file: says so (exit 2)"; else bad "run -c without a file: says so (exit 2)"; fi
if run 2 "$MAILMESH" pubkey "$T/a.key" && has err "mailmesh pubkey < $T/a.key"; then ok "pubkey FILE: says the key goes on stdin (exit 2)"; else bad "pubkey FILE: says the key goes on stdin (exit 2)"; fi
if run 1 "$MAILMESH" reload --config "$C" && has err "the daemon is not running"; then ok "reload takes --config as check-config does"; else bad "reload takes --config as check-config does"; fi

# Relative paths are relative to the config file, not the working directory.
mkdir -p "$T/rel/keys"
"$MAILMESH" genkey -o "$T/rel/keys/k"
printf 'r1 [::1]:24050 %s\n' "$("$MAILMESH" pubkey <"$T/rel/keys/k")" >"$T/rel/peers"
printf 'name = r1\nlisten = [::1]:24050\nprivate_key = keys/k\npeers = peers\nstate_dir = st\nmail_location = mail/%%d/%%n\n' >"$T/rel/r.conf"
mkdir -p "$T/rel/mail"
if (cd / && run 0 "$MAILMESH" check-config -c "$T/rel/r.conf") && has out "[::1]:24050" &&
   has out "control_socket: $T/rel/st/control.sock" && has out "(plus this node, line 1)" &&
   has out "mail_location:  $T/rel/mail/%d/%n" && has err "lists no other node"; then
	ok "relative paths follow the config file; IPv6 listen"
else
	bad "relative paths follow the config file; IPv6 listen"
fi

# mail_location's fixed base must exist: a typo (or an unmounted disk whose mount point
# is the base) would have the daemon make a tree Dovecot never reads and fill it with
# the peers' mail.  check-config and run both refuse, naming the line.
printf 'name = r1\nlisten = [::1]:24050\nprivate_key = keys/k\npeers = peers\nstate_dir = st\nmail_location = maildir:%s/rel/vmial/%%d/%%n\n' "$T" >"$T/rel/typo.conf"
if run 2 "$MAILMESH" check-config -c "$T/rel/typo.conf" &&
   has err "$T/rel/typo.conf:6: mail_location's base directory $T/rel/vmial does not exist"; then
	ok "check-config: a mail_location whose base does not exist is refused, naming file and line (exit 2)"
else
	bad "check-config: a mail_location whose base does not exist is refused, naming file and line (exit 2)"
fi
if run 1 timeout 20 "$MAILMESH" run -c "$T/rel/typo.conf" &&
   has err "$T/rel/typo.conf:6: mail_location's base directory $T/rel/vmial does not exist" &&
   [ ! -e "$T/rel/vmial" ]; then
	ok "run: refuses to start with that mail_location, and makes no directory there"
else
	bad "run: refuses to start with that mail_location, and makes no directory there (rc $rc)"
fi
printf 'name = r1\nlisten = [::1]:24050\nprivate_key = keys/k\npeers = peers\nstate_dir = st\n' >"$T/rel/default.conf"
if [ ! -e /var/mail/vhosts ]; then
	if run 2 "$MAILMESH" check-config -c "$T/rel/default.conf" &&
	   has err "$T/rel/default.conf: mail_location is not set, and its default's base directory /var/mail/vhosts does not exist"; then
		ok "check-config: mail_location unset and /var/mail/vhosts missing: says so (exit 2)"
	else
		bad "check-config: mail_location unset and /var/mail/vhosts missing: says so (exit 2)"
	fi
fi

checks_done
