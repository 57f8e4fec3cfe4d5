"""it_daemon_check.py — `mailmesh check`, the one-line report for monitoring systems
(Nagios/Icinga plugin conventions: OK 0, WARNING 1, CRITICAL 2, UNKNOWN 3).  Real
daemons on loopback, ports 22170-22179.

1. Three nodes in sync: node 1's check says OK, 2 of 2 peers in sync, with perfdata.
2. Node 3 stopped: past --max-lag 1 node 1's check says WARNING and names node 3.
3. Node 2 stopped too: CRITICAL, no peer in sync (node 1's mail is on no other server).
4. Node 2 back: WARNING again (node 3 still away).
5. Node 1 stopped: CRITICAL, the daemon is not running.
6. A bad --max-lag, a missing -c, an unreadable config: UNKNOWN (3), on stdout.
Prints `N passed, N failed`."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

BASE = 22170
USER = "example.org/alice"


def check(node, *args):
    r = subprocess.run([mmtest.MAILMESH, "check", "-c", node.conf] + list(args), capture_output=True, text=True,
                       timeout=30)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def wait_check(node, rc_want, args, timeout=15):
    deadline = time.monotonic() + timeout * mmtest.SLOW
    r = check(node, *args)
    while r[0] != rc_want and time.monotonic() < deadline:
        time.sleep(0.2)
        r = check(node, *args)
    return r


def check_test(t):
    failed_before = t.failed
    cl = mmtest.Cluster(3, BASE, name="check")
    try:
        n1, n2, n3 = cl.nodes
        cl.start()
        n1.deliver(USER, mmtest.message(1))
        t.check(cl.wait_converged(timeout=30), "three nodes in sync")
        rc, out, err = wait_check(n1, 0, [])
        t.check(rc == 0 and out.startswith("OK: 2 of 2 peers in sync") and "users: 1," in out
                and "| peers_in_sync=2;;;0;2 missing_bodies=0" in out and not err,
                "in sync: OK, exit 0 (%s: %s)" % (rc, out))

        n3.stop()
        rc, out, _ = wait_check(n1, 1, ["--max-lag", "1"])
        t.check(rc == 1 and out.startswith("WARNING: 1 of 2 peers in sync") and "peer node3 not in sync" in out,
                "node 3 down: WARNING, exit 1, naming node 3 (%s: %s)" % (rc, out))
        rc, out, _ = check(n1)
        t.check(rc == 0, "within the default lag (300 s) the same is still OK (%s: %s)" % (rc, out))

        n2.stop()
        rc, out, _ = wait_check(n1, 2, ["--max-lag", "1"])
        t.check(rc == 2 and out.startswith("CRITICAL: 0 of 2 peers in sync") and "no peer in sync within 1 s" in out,
                "nodes 2 and 3 down: CRITICAL, exit 2 (%s: %s)" % (rc, out))

        n2.start()
        rc, out, _ = wait_check(n1, 1, ["--max-lag", "1"])
        t.check(rc == 1 and "peer node3" in out and "node2" not in out,
                "node 2 back: WARNING again, for node 3 only (%s: %s)" % (rc, out))

        code = n1.stop()
        rc, out, _ = check(n1)
        t.check(code == 0 and rc == 2 and out.startswith("CRITICAL: the daemon is not running"),
                "node 1 stopped: CRITICAL, exit 2 (%s: %s)" % (rc, out))

        bad = [check(n1, "--max-lag", "soon"), check(n1, "--max-lag", "0"),
               subprocess.run([mmtest.MAILMESH, "check"], capture_output=True, text=True),
               check(type("N", (), {"conf": os.path.join(cl.dir, "missing.conf")})())]
        codes = [b[0] if isinstance(b, tuple) else b.returncode for b in bad]
        outs = [b[1] if isinstance(b, tuple) else b.stdout.strip() for b in bad]
        t.check(codes == [3, 3, 3, 3] and all(o.startswith("UNKNOWN: ") for o in outs),
                "a bad --max-lag, no -c, an unreadable config: UNKNOWN, exit 3, on stdout (%s; %s)"
                % (codes, " / ".join(outs)))
        codes = [n.stop() for n in (n2, n3)]
        t.check(codes == [0, None], "node 2 stops with status 0 (%s)" % codes)
    finally:
        cl.close(keep_on_failure=os.environ.get("KEEP") == "1" and t.failed > failed_before)


def main():
    mmtest.exit_on_sigterm()
    t = mmtest.Report("it_daemon_check")
    t.run(check_test)
    t.finish()


if __name__ == "__main__":
    main()
