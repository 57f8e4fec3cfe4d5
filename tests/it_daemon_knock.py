"""it_daemon_knock.py — a node that is dialed (its key sorts higher) is connected to
again within a moment of its start, not at the end of the dialer's reconnect backoff
(up to 10 s): it knocks (proto/knock.h).  Real daemons on loopback, ports 22090-22099.

A 2-node cluster: the dialer starts alone and waits 4 s, so its retries are ~3 s
apart by then; the other node starts and both must show the peer connected within
1 s (the backoff alone would take 1.6-3.2 s more).  The same after the dialed node
is stopped for 4 s and started again, and a message delivered on it then reaches the
dialer.  Then the dialer restarts alone: it still knows when the other was last in sync
(the tombstone GC waits for it).  Prints `N passed, N failed`."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

BASE = 22090
USER = "example.org/alice"
WITHIN = 1.0  # seconds; the knock takes a round trip, the backoff it replaces seconds


def connected(node):
    return node.connected()


def wait_connected(nodes, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if all(connected(n) for n in nodes):
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


def check_connected(t, nodes, what):
    took = wait_connected(nodes, 10 * mmtest.SLOW)
    t.check(took is not None and took < WITHIN * mmtest.SLOW, "%s within %.1f s (took %s)" % (
        what, WITHIN * mmtest.SLOW, "%.3f s" % took if took is not None else "more than 10 s"))


def knock_test(t):
    cl = mmtest.Cluster(2, BASE, name="knock")
    failed_before = t.failed
    try:
        a, b = cl.nodes
        # the lower public key dials (node/peer.c)
        if b.public_key() < a.public_key():
            a, b = b, a
        dialer, dialed = a, b
        dialer.start()
        time.sleep(4)
        dialed.start()
        check_connected(t, [dialer, dialed], "a dialed node that starts is connected")
        t.check("knocked peer=" in dialer.log_text(), "the dialer logged the knock")
        t.check(dialed.stop() == 0, "the dialed node stops cleanly")
        time.sleep(4)
        dialed.start()
        check_connected(t, [dialer, dialed], "restarted after 4 s, it is connected again")
        dialed.deliver(USER, b"From: a@example.org\r\nSubject: after the knock\r\n\r\nhello\r\n")
        deadline = time.monotonic() + 10 * mmtest.SLOW
        while time.monotonic() < deadline and dialer.message_count() < 1:
            time.sleep(0.02)
        t.check(dialer.message_count() == 1, "a message delivered on it reaches the dialer")
        codes = [n.stop() for n in (dialer, dialed)]
        t.check(codes == [0, 0], "both stop cleanly with no leaked handle (%s)" % codes)
        # When the peer was last in sync survives a restart (the state database): the
        # tombstone GC waits for a peer that has been away (node/daemon.c gc_cb).  With
        # gc_grace = 1s, the GC 1 s after the start must wait for the absent peer.
        cl.set_conf(dialer, "gc_grace", "1s")
        before = len(dialer.log_text())  # (the runs before may have logged GC waits of their own)
        dialer.start()
        peers = (dialer.status(quiet=True) or {}).get("peers", [])
        ago = peers[0].get("last_sync_ms_ago", -1) if peers else -1
        t.check(0 <= ago < 120000 * mmtest.SLOW and not peers[0].get("connected"),
                "restarted alone, the node knows when its absent peer was last in sync (%s ms ago)" % ago)
        # ... and the GC bound that peer sent (its digests carry it): its default
        # gc_grace, 30 days, all its peers being in sync
        month = 30 * 86400 * 1000
        bound_ago = peers[0].get("gc_bound_ms_ago", -1) if peers else -1
        t.check(month <= bound_ago < month + 600000 * mmtest.SLOW,
                "restarted alone, it still has the GC bound its absent peer sent (%s ms ago, 30 days = %d)"
                % (bound_ago, month))
        deadline = time.monotonic() + 10 * mmtest.SLOW
        while time.monotonic() < deadline and "tombstone gc waits for peer" not in dialer.log_text()[before:]:
            time.sleep(0.05)
        # (the time comes from the state database: a node that forgot it would say "never")
        waits = re.search(r"tombstone gc waits for peer node%d, last in sync \d+ s ago" % dialed.i,
                          dialer.log_text()[before:])
        t.check(waits is not None,
                "its tombstone GC waits for that peer, last in sync before the restart, instead of dropping "
                "tombstones it may lack")
        t.check(dialer.stop() == 0, "it stops cleanly")
    finally:
        cl.close(keep_on_failure=t.failed > failed_before and os.environ.get("KEEP") == "1")


def main():
    mmtest.exit_on_sigterm()
    t = mmtest.Report("it_daemon_knock")
    t.run(knock_test)
    t.finish()


if __name__ == "__main__":
    main()
