"""it_daemon_stale.py — a node out of sync with every peer for longer than gc_max does
not merge its state, which could bring back mail its peers expunged and whose
tombstones they have since dropped (docs/design.md, "Tombstone GC"; docs/operations.md,
"A node away longer than gc_max").  Real daemons on loopback, ports 22160-22169, with
gc_grace = 1s and gc_max = 10s: a node counts as stale 5 s after its last sync with any
peer (gc_max less a margin of at most half of it, node/daemon.c stale_margin_ms).

1. Nodes 1 and 2 hold 5 messages and are in sync; both stop.
2. Node 2 alone, 4.3 s after: it starts (not stale yet) or refuses to, and in either
   case it is stopped with status 3 by its first tombstone GC, a second later, at the
   latest: alone, it cannot get back in sync.
3. Node 1, much later: it refuses to start (status 3), naming its state_dir, gc_max
   and `--accept-stale` in its log.
4. Both with `--accept-stale`: they start (a warning in the log; status shows `stale`
   and `accept_stale`, `mailmesh check` CRITICAL), get in sync, and then are stale no
   more; mail flows.
5. Both stop with status 0.
Prints `N passed, N failed`."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

BASE = 22160
USER = "example.org/alice"
EXIT_STALE = 3


def run_until_exit(node, timeout):
    """Runs node's daemon until it exits by itself; its status, or None if it was
    still running after timeout (then it is stopped)."""
    with open(node.log, "a") as logf:
        p = subprocess.Popen([mmtest.MAILMESH, "run", "-c", node.conf] + node.args, stdout=logf, stderr=logf)
    try:
        return p.wait(timeout=timeout * mmtest.SLOW)
    except subprocess.TimeoutExpired:
        p.terminate()
        p.wait()
        return None


def stale_test(t):
    failed_before = t.failed
    cl = mmtest.Cluster(2, BASE, name="stale")
    try:
        for n in cl.nodes:
            cl.set_conf(n, "gc_grace", "1s")
            cl.set_conf(n, "gc_max", "10s")
        n1, n2 = cl.nodes
        # 1. in sync, then both down
        cl.start()
        for i in range(5):
            n1.deliver(USER, mmtest.message(i))
        t.check(cl.wait_converged(timeout=30), "nodes 1 and 2 hold the same 5 messages")
        st = n1.status(quiet=True) or {}
        t.check(st.get("stale") is False and st.get("accept_stale") is False,
                "in sync, node 1's status says it is not stale (%s, %s)" % (st.get("stale"), st.get("accept_stale")))
        codes = [n.stop() for n in cl.nodes]
        t.check(codes == [0, 0], "both stop with status 0 (%s)" % codes)
        t_down = time.monotonic()

        # 2. node 2 alone, 0.7 s before it counts as stale
        time.sleep(max(0.0, 4.3 - (time.monotonic() - t_down)))
        before = len(n2.log_text(whole=True))
        rc = run_until_exit(n2, 15)
        log2 = n2.log_text(whole=True)[before:]
        at_start = "start-up refused" in log2
        t.check(rc == EXIT_STALE, "node 2, alone past the limit, stops with status 3 (%s), %s" %
                (rc, "refusing to start" if at_start else "at its first tombstone GC"))
        t.check(("Rebuild it" in log2) if at_start else ("stopping" in log2 and "none of its peers" in log2),
                "and its log says why")

        # 3. node 1, long past the limit
        time.sleep(max(0.0, 6.0 - (time.monotonic() - t_down)))
        before = len(n1.log_text(whole=True))
        rc = run_until_exit(n1, 15)
        log1 = n1.log_text(whole=True)[before:]
        t.check(rc == EXIT_STALE, "node 1 refuses to start, status 3 (%s)" % rc)
        state_dir = [l.split("=", 1)[1].strip() for l in open(n1.conf) if l.split("=")[0].strip() == "state_dir"]
        t.check("last in sync with a peer" in log1 and "gc_max (10 s)" in log1 and "--accept-stale" in log1
                and bool(state_dir) and state_dir[0] in log1,
                "its log names the state directory (%s), gc_max and --accept-stale" % (state_dir or "?"))
        t.check(n1.message_count() == 5 and n2.message_count() == 5, "nothing was removed from either Maildir")

        # 4. accepted: both start, sync, and are not stale any more
        for n in cl.nodes:
            n.args = ["--accept-stale"]
        n1.start()
        st = n1.status(quiet=True) or {}
        t.check(st.get("stale") is True and st.get("accept_stale") is True,
                "with --accept-stale node 1 starts; its status says stale, accepted (%s, %s)"
                % (st.get("stale"), st.get("accept_stale")))
        t.check("starting anyway (--accept-stale)" in n1.log_text(whole=True)[before:], "and its log warns")
        r = subprocess.run([mmtest.MAILMESH, "check", "-c", n1.conf], capture_output=True, text=True, timeout=30)
        t.check(r.returncode == 2 and r.stdout.startswith("CRITICAL:") and "stale" in r.stdout,
                "mailmesh check says CRITICAL, stale (%s: %s)" % (r.returncode, r.stdout.strip()))
        n2.start()
        n2.deliver(USER, mmtest.message(100))
        t.check(cl.wait_converged(timeout=30), "nodes 1 and 2 sync again: 6 messages each (%d, %d)"
                % (n1.message_count(), n2.message_count()))
        deadline = time.monotonic() + 10 * mmtest.SLOW
        while time.monotonic() < deadline and any((n.status(quiet=True) or {}).get("stale") for n in cl.nodes):
            time.sleep(0.1)
        t.check(not any((n.status(quiet=True) or {}).get("stale") for n in cl.nodes),
                "in sync, neither is stale any more")

        # 5. clean stops
        codes = [n.stop() for n in cl.nodes]
        t.check(codes == [0, 0], "both stop with status 0 (%s)" % codes)
    finally:
        cl.close(keep_on_failure=os.environ.get("KEEP") == "1" and t.failed > failed_before)


def main():
    mmtest.exit_on_sigterm()
    t = mmtest.Report("it_daemon_stale")
    t.run(stale_test)
    t.finish()


if __name__ == "__main__":
    main()
