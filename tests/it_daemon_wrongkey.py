"""it_daemon_wrongkey.py — an admin's slip in the peers file is named in the log at the
default log_level: a node whose peers file has a wrong public key for a peer (a typo,
a key regenerated on that peer), or whose cluster_psk differs from the peer's, keeps
failing its handshakes; both ends said nothing above `debug` before.  Real daemons on
loopback, ports 22200-22209 (MM_TEST_BASE_PORT= moves them).

A 2-node cluster at log_level = info:
1. the dialer's peers file (its own copy) holds another key on the dialed node's line:
   the dialer logs `warn handshake with peer=NODE failed ...` naming that line, and
   the two stay disconnected;
2. the right key is put back and the dialer reloads: they connect;
3. the dialer gets a cluster_psk the other lacks (a restart): the same warning;
4. the dialer's line for the other holds a key that sorts below its own: each node
   then waits to be dialed and no handshake fails; the dialer logs `warn peer=NODE
   knocks from its address with another key than its line (...)`.
Prints `N passed, N failed`."""
import base64
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

BASE = int(os.environ.get("MM_TEST_BASE_PORT", "22200"))


wait_for = mmtest.wait_for


def connected(node):
    return node.connected()


def wrongkey_test(t):
    cl = mmtest.Cluster(2, BASE, name="wrongkey")
    failed_before = t.failed
    try:
        a, b = cl.nodes
        for n in cl.nodes:
            cl.set_conf(n, "log_level", "info")  # what an admin runs with
        # the lower public key dials (node/peer.c)
        if b.public_key() < a.public_key():
            a, b = b, a
        dialer, dialed = a, b
        shared = os.path.join(cl.dir, "peers")
        with open(shared) as f:
            text = f.read()
        # The wrong key must sort above the dialer's, as the real one does: the dialer
        # decides from the keys it has whether it dials (the lower key dials), and with
        # a wrong key below its own neither node would dial (the test failed so about
        # half of its runs).
        while True:
            other = mmtest.run([mmtest.MAILMESH, "genkey"]).stdout.strip()
            other_pub = mmtest.run([mmtest.MAILMESH, "pubkey"], input=other + "\n").stdout.strip()
            if base64.b64decode(other_pub) > dialer.public_key():
                break
        own = os.path.join(cl.dir, "peers.dialer")
        with open(own, "w") as f:
            f.write(text.replace(base64.b64encode(dialed.public_key()).decode(), other_pub))
        line = [i + 1 for i, l in enumerate(text.splitlines()) if l.startswith("node%d " % dialed.i)][0]
        cl.set_conf(dialer, "peers", own)

        dialed.start()
        dialer.start()
        want = re.compile(r" warn handshake with peer=node%d failed .*\(%s:%d\) has its current public key"
                          % (dialed.i, re.escape(own), line))
        t.check(wait_for(lambda: want.search(dialer.log_text()), 10),
                "a wrong key for a peer: the dialer warns, naming the peers file's line")
        t.check(not connected(dialer), "and it is not connected")

        with open(own, "w") as f:
            f.write(text)
        r = mmtest.run([mmtest.MAILMESH, "reload", "-c", dialer.conf])
        t.check(r.returncode == 0, "the fixed peers file is taken by a reload (%s)" % r.stdout.strip())
        t.check(wait_for(lambda: connected(dialer) and connected(dialed), 10),
                "with the right key they connect")

        for n in (dialer, dialed):
            t.check(n.stop() == 0, "node%d stops cleanly" % n.i)
        psk = os.path.join(cl.dir, "cluster.psk")
        mmtest.run([mmtest.MAILMESH, "genkey", "-o", psk])
        cl.set_conf(dialer, "cluster_psk", psk)
        before = len(dialer.log_text(whole=True))
        dialed.start()
        dialer.start()
        t.check(wait_for(lambda: want.search(dialer.log_text(whole=True)[before:]), 10),
                "a cluster_psk on one side only: the same warning")
        t.check(not connected(dialer), "and it is not connected")
        for n in (dialer, dialed):
            t.check(n.stop() == 0, "node%d stops cleanly" % n.i)

        # A wrong key that sorts below the node's own: then that node waits to be
        # dialed, and the other, which has the right keys, does too (each decides
        # from the keys it has), so no handshake ever fails.  The only trace is the
        # other's knocks, which come from the listed address with an id that line's
        # key does not give.
        with open(dialer.conf) as f:
            conf = [l for l in f if l.split("=")[0].strip() != "cluster_psk"]
        with open(dialer.conf, "w") as f:
            f.writelines(conf)
        while True:
            low = mmtest.run([mmtest.MAILMESH, "genkey"]).stdout.strip()
            low_pub = mmtest.run([mmtest.MAILMESH, "pubkey"], input=low + "\n").stdout.strip()
            if base64.b64decode(low_pub) < dialer.public_key():
                break
        own2 = os.path.join(cl.dir, "peers.low")
        with open(own2, "w") as f:
            f.write(text.replace(base64.b64encode(dialed.public_key()).decode(), low_pub))
        cl.set_conf(dialer, "peers", own2)
        before = len(dialer.log_text(whole=True))
        dialed.start()
        dialer.start()
        knock = re.compile(r" warn peer=node%d knocks from its address with another key than its line \(%s:%d\)"
                           % (dialed.i, re.escape(own2), line))
        t.check(wait_for(lambda: knock.search(dialer.log_text(whole=True)[before:]), 10),
                "a wrong key below the node's own (neither dials): its peer's knocks are reported, naming the line")
        t.check(not connected(dialer), "and it is not connected")
        for n in (dialer, dialed):
            t.check(n.stop() == 0, "node%d stops cleanly" % n.i)
    finally:
        cl.close(keep_on_failure=t.failed > failed_before and os.environ.get("KEEP") == "1")


def main():
    mmtest.exit_on_sigterm()
    t = mmtest.Report("it_daemon_wrongkey")
    t.run(wrongkey_test)
    t.finish()


if __name__ == "__main__":
    main()
