"""it_daemon_check.py — `mailmesh check`, the one-line report for monitoring systems
(Nagios/Icinga plugin conventions: OK 0, WARNING 1, CRITICAL 2, UNKNOWN 3).  Real
daemons on loopback, ports 22170-22179.

1. Three nodes in sync: node 1's check says OK, 2 of 2 peers in sync, with perfdata.
2. Node 3 stopped: past --max-lag 1 node 1's check says WARNING and names node 3.  A
   refused reload of the peers file: WARNING; repaired: OK.  Another user than the
   daemon's: check UNKNOWN (3), status exit 1.
3. Node 2 stopped while node 1 takes a message, whose file on node 1 is then
   overwritten in place: back, node 2 rejects the bytes every time, and its check
   says WARNING, a message missing its body.  Node 2 stopped again: node 1's check
   is CRITICAL, no peer in sync (node 1's mail is on no other server).
4. Node 2 back: WARNING again (node 3 still away).
5. Node 1 stopped: CRITICAL, the daemon is not running.
6. Something else on the control socket (a daemon that does not know "check", one that
   never answers, with -t 1), a bad --max-lag, a missing -c, an unreadable config:
   UNKNOWN (3), on stdout.
Prints `N passed, N failed`."""
import os
import socket
import subprocess
import sys
import threading
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

        # a peers file with a bad line: the reload is refused, which a check reports
        peers = os.path.join(cl.dir, "peers")  # (the testnet's one file, read by all)
        good = open(peers).read()
        with open(peers, "a") as f:
            f.write("node9 127.0.0.1:1 not-a-key\n")
        r = subprocess.run([mmtest.MAILMESH, "reload", "-c", n1.conf], capture_output=True, text=True, timeout=30)
        rc, out, _ = check(n1)
        t.check(r.returncode == 1 and rc == 1 and "the last reload was refused" in out,
                "a refused reload: WARNING, exit 1 (%s: %s)" % (rc, out))
        with open(peers, "w") as f:
            f.write(good)
        r = subprocess.run([mmtest.MAILMESH, "reload", "-c", n1.conf], capture_output=True, text=True, timeout=30)
        rc, out, _ = check(n1)
        t.check(r.returncode == 0 and rc == 0, "the file repaired and reloaded: OK again (%s: %s)" % (rc, out))

        # someone not allowed on the control socket: the check cannot tell (UNKNOWN),
        # and status says so with exit 1
        for p in (cl.dir, n1.dir):
            os.chmod(p, 0o755)
        os.chmod(n1.conf, 0o644)

        def as_nobody():
            os.setgid(65534)
            os.setuid(65534)
        rs = [subprocess.run([mmtest.MAILMESH, cmd, "-c", n1.conf], capture_output=True, text=True, timeout=30,
                             preexec_fn=as_nobody) for cmd in ("check", "status")]
        t.check(rs[0].returncode == 3 and rs[0].stdout.startswith("UNKNOWN: permission denied")
                and rs[1].returncode == 1 and "permission denied" in rs[1].stderr,
                "as another user: check UNKNOWN, exit 3; status exit 1 (%s: %s; %s: %s)"
                % (rs[0].returncode, rs[0].stdout.strip(), rs[1].returncode, rs[1].stderr.strip()))

        # a body no peer can send right: node 2, stopped, misses a message whose file on
        # node 1 was then overwritten in place (bit rot, a careless script); back, it
        # rejects those bytes every time, and the message stays away from its IMAP
        n2.stop()
        base = n1.deliver(USER, b"From: a@example.org\r\nSubject: big\r\n\r\n" + b"x" * 100000 + b"\r\n")
        time.sleep(1.0 * mmtest.SLOW)  # (node 1 indexes it: its bytes' id is taken now)
        path = [os.path.join(n1.maildir(USER), sub, f) for sub, f in n1.files(USER) if f.startswith(base)][0]
        st = os.stat(path)
        with open(path, "r+b") as f:
            f.seek(st.st_size - 1000)
            f.write(b"y" * 998)
        os.utime(path, (st.st_atime, st.st_mtime))
        n2.start()
        deadline = time.monotonic() + 20 * mmtest.SLOW
        rc, out, _ = check(n2, "--max-lag", "1")
        while "missing their body" not in out and time.monotonic() < deadline:
            time.sleep(0.2)
            rc, out, _ = check(n2, "--max-lag", "1")
        t.check(rc == 1 and "1 messages missing their body here" in out and "missing_bodies=1" in out,
                "node 2 lacking a body no peer sends right: WARNING, exit 1 (%s: %s)" % (rc, out))
        t.check("body rejected" in n2.log_text(whole=True), "and node 2's log says it rejected those bytes")

        n2.stop()
        rc, out, _ = wait_check(n1, 2, ["--max-lag", "1"])
        t.check(rc == 2 and out.startswith("CRITICAL: 0 of 2 peers in sync") and "no peer in sync within 1 s" in out,
                "nodes 2 and 3 down: CRITICAL, exit 2 (%s: %s)" % (rc, out))

        n2.start()
        rc, out, _ = wait_check(n1, 1, ["--max-lag", "1"])
        t.check(rc == 1 and "peer node3" in out and "node2" not in out and "missing their body" not in out,
                "node 2 back: WARNING again, for node 3 only (%s: %s)" % (rc, out))

        code = n1.stop()
        rc, out, _ = check(n1)
        t.check(code == 0 and rc == 2 and out.startswith("CRITICAL: the daemon is not running"),
                "node 1 stopped: CRITICAL, exit 2 (%s: %s)" % (rc, out))

        # something else on the control socket: a daemon that does not know "check"
        # (older), one that never answers
        sock_path = [l.split("=", 1)[1].strip() for l in open(n1.conf) if l.split("=")[0].strip() == "control_socket"]
        sock_path = sock_path[0] if sock_path else os.path.join(n1.dir, "state", "control.sock")
        answers = []
        for answer in (b"error: unknown request 'check 300000'\n", None):
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if os.path.exists(sock_path):
                os.unlink(sock_path)
            srv.bind(sock_path)
            srv.listen(1)

            def serve(srv=srv, answer=answer):
                conn, _ = srv.accept()
                conn.recv(100)
                if answer:
                    conn.sendall(answer)
                else:
                    time.sleep(3)
                conn.close()
            th = threading.Thread(target=serve)
            th.start()
            answers.append(check(n1, "-t", "1"))
            th.join()
            srv.close()
            os.unlink(sock_path)
        t.check(answers[0][0] == 3 and answers[0][1].startswith("UNKNOWN: unexpected answer from the daemon: error:")
                and answers[1][0] == 3 and answers[1][1].startswith("UNKNOWN: no answer from the daemon in time"),
                "an answer that is not a check's, and none within -t: UNKNOWN, exit 3 (%s)" % answers)

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
