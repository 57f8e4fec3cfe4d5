"""it_daemon_members.py — servers added to and retired from a running cluster by editing
the peers file and sending SIGHUP (`systemctl reload mailmesh`), with no daemon
restarted.  Real daemons on loopback, ports 22150-22159.

1. Nodes 1 and 2 run with a peers file listing the two of them and hold 20 messages.
   Node 3 starts with a file listing all three: nodes 1 and 2 refuse its key, and it
   gets nothing.
2. Nodes 1 and 2 get the three-line file and a SIGHUP while node 2 takes deliveries:
   node 3 is connected to and gets everything, nothing is lost, the three agree that
   they count the same nodes (`gc_same_peers`, so the tombstone GC may go on), and
   nobody restarted.
3. A peers file with a bad line (SIGHUP), then one listing only node 1 (`mailmesh
   reload`, which exits 1 with the reason): node 1 logs and shows each error (the file
   and line), keeps its peers, and takes the repaired file (`mailmesh reload`, exit 0).  Then mailmesh.conf: a new log_level is taken at once, and a changed
   gossip_interval is named in the log as waiting for a restart.
4. A peer's address changes (a port nobody listens on) and back: node 1 drops and
   re-makes that connection.
5. Node 2 is retired: nodes 1 and 3 get a file without it and a SIGHUP.  They drop it,
   refuse it, and mail delivered on it reaches neither; mail still flows between 1 and
   3, which again agree on their members.
6. Every daemon stops with status 0 (no libuv handle leaked, no sanitizer report).
Prints `N passed, N failed`."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

BASE = 22150
USER = "example.org/alice"


def write_peers(node, lines):
    path = os.path.join(node.dir, "peers")
    with open(path + ".new", "w") as f:
        f.write("# written by it_daemon_members.py\n" + "".join(lines))
    os.rename(path + ".new", path)   # as an admin's editor or config tool would


def hup(node):
    node.proc.send_signal(signal.SIGHUP)


def peer_names(node):
    st = node.status(quiet=True) or {}
    return sorted(p["name"] for p in st.get("peers", []))


def wait_for(what, timeout=15):
    return mmtest.wait_for(what, timeout, 0.1)


def all_connected(node, names):
    st = node.status(quiet=True) or {}
    ps = {p["name"]: p for p in st.get("peers", [])}
    return sorted(ps) == sorted(names) and all(ps[n]["connected"] for n in names)


def same_members(node):
    st = node.status(quiet=True) or {}
    return bool(st.get("peers")) and all(p["gc_same_peers"] for p in st["peers"])


def count(node):
    return len(node.files(USER)) if os.path.isdir(node.maildir(USER)) else 0


def members_test(t):
    cl = mmtest.Cluster(3, BASE, name="members")
    failed_before = t.failed
    try:
        n1, n2, n3 = cl.nodes
        with open(os.path.join(cl.dir, "peers")) as f:
            line = {l.split()[0]: l for l in f if l.strip() and not l.startswith("#")}
        for n in cl.nodes:
            cl.set_conf(n, "peers", os.path.join(n.dir, "peers"))
        write_peers(n1, [line["node1"], line["node2"]])
        write_peers(n2, [line["node1"], line["node2"]])
        write_peers(n3, [line["node1"], line["node2"], line["node3"]])

        # 1. two nodes; a third that nobody lists yet
        n1.start()
        n2.start()
        for i in range(20):
            n1.deliver(USER, b"Subject: before %d\r\n\r\nbody %d\r\n" % (i, i))
        t.check(cl.wait_converged(nodes=[n1, n2]), "nodes 1 and 2 converge on 20 messages")
        n3.start()
        time.sleep(2)
        t.check(count(n3) == 0, "node 3, listed by nobody, got nothing (%d messages)" % count(n3))
        t.check(not any(p["connected"] for p in (n3.status(quiet=True) or {}).get("peers", [{}])),
                "node 3 is connected to nobody")
        pids = (n1.pid(), n2.pid())

        # 2. node 3 added on the running nodes, while node 2 takes deliveries
        write_peers(n1, [line["node1"], line["node2"], line["node3"]])
        write_peers(n2, [line["node1"], line["node2"], line["node3"]])
        for i in range(10):
            n2.deliver(USER, b"Subject: during %d\r\n\r\nbody %d\r\n" % (i, i))
            if i == 3:
                hup(n1)
            if i == 6:
                hup(n2)
            time.sleep(0.05)
        t.check(cl.wait_converged(), "after the reload all three converge")
        t.check(count(n3) == 30, "node 3 holds all 30 messages (%d)" % count(n3))
        t.check((n1.pid(), n2.pid()) == pids, "nodes 1 and 2 were not restarted")
        t.check(wait_for(lambda: all(all_connected(n, [m for m in ("node1", "node2", "node3") if m != "node%d" % n.i])
                                     for n in cl.nodes)), "every node is connected to both others")
        st1 = n1.status(quiet=True) or {}
        t.check(st1.get("peers_reloads") == 1 and st1.get("peers_reload_error") == "",
                "node 1's status counts the reload (%s, %r)" % (st1.get("peers_reloads"), st1.get("peers_reload_error")))
        t.check("reloaded: 2 peers added=node3" in n1.log_text(whole=True), "node 1 logs the peer it added")
        if not t.check(wait_for(lambda: all(same_members(n) for n in cl.nodes)),
                       "the three count the same members (gc_same_peers everywhere)"):
            for n in cl.nodes:
                print("node%d: %s" % (n.i, [(p["name"], p["gc_bound_ms_ago"], p["gc_same_peers"])
                                            for p in (n.status(quiet=True) or {}).get("peers", [])]))

        # 3. a bad line changes nothing
        with open(os.path.join(n1.dir, "peers"), "a") as f:
            f.write("node4 192.0.2.1:4000 not-a-key\n")
        hup(n1)
        st1 = wait_for(lambda: (lambda s: s if s and s.get("peers_reload_error") else None)(n1.status(quiet=True)))
        err = (st1 or {}).get("peers_reload_error", "")
        t.check(os.path.join(n1.dir, "peers") + ":5:" in err, "the failed reload names the file and line (%r)" % err)
        t.check(peer_names(n1) == ["node2", "node3"] and all_connected(n1, ["node2", "node3"]),
                "node 1 keeps its peers and connections")
        n3.deliver(USER, b"Subject: after a bad reload\r\n\r\nbody\r\n")
        t.check(cl.wait_converged(), "mail still flows (31 messages everywhere)")
        # a file cut down to this node's own line: every peer would go, refused too;
        # `mailmesh reload` (the unit's ExecReload) says so and exits 1
        write_peers(n1, [line["node1"]])
        r = mmtest.run([mmtest.MAILMESH, "reload", "-c", n1.conf], timeout=30 * mmtest.SLOW)
        t.check(r.returncode == 1 and r.stdout.startswith("error: ") and "lists no other node" in r.stdout,
                "`mailmesh reload` of a file listing no other node fails with the reason (exit %d, %r)"
                % (r.returncode, r.stdout.strip()))
        t.check("lists no other node" in (n1.status(quiet=True) or {}).get("peers_reload_error", ""),
                "status shows it too")
        t.check(peer_names(n1) == ["node2", "node3"], "and node 1 keeps its peers")
        write_peers(n1, [line["node1"], line["node2"], line["node3"]])
        r = mmtest.run([mmtest.MAILMESH, "reload", "-c", n1.conf], timeout=30 * mmtest.SLOW)
        t.check(r.returncode == 0 and r.stdout.startswith("ok: ") and "2 peers" in r.stdout,
                "`mailmesh reload` of the repaired file succeeds (exit %d, %r)" % (r.returncode, r.stdout.strip()))
        t.check(wait_for(lambda: (n1.status(quiet=True) or {}).get("peers_reloads") == 2),
                "the repaired file is taken")
        t.check((n1.status(quiet=True) or {}).get("peers_reload_error") == "", "and the error is gone")

        # 3b. mailmesh.conf: log_level is taken, another setting waits for a restart
        cl.set_conf(n1, "log_level", "info")
        cl.set_conf(n1, "gossip_interval", "300ms")
        hup(n1)
        t.check(wait_for(lambda: "reload: log_level debug -> info" in n1.log_text(whole=True)), "a reload takes log_level")
        t.check(wait_for(lambda: "gossip_interval changed; taken at the next restart" in n1.log_text(whole=True)),
                "and names the setting that waits for a restart")
        mark = len(n1.log_text(whole=True))
        n2.deliver(USER, b"Subject: after log_level\r\n\r\nbody\r\n")
        t.check(cl.wait_converged(), "mail still flows (32 messages everywhere)")
        t.check(" debug " not in n1.log_text(whole=True)[mark:], "node 1 logs no debug line any more")

        # 4. an address change drops and re-makes the connection
        host, port = line["node3"].split()[1].rsplit(":", 1)
        moved = line["node3"].replace("%s:%s" % (host, port), "%s:%d" % (host, BASE + 9))
        write_peers(n1, [line["node1"], line["node2"], moved])
        hup(n1)
        t.check(wait_for(lambda: 'disconnected peer=node3 reason="its address changed in the peers file"'
                         in n1.log_text(whole=True)), "node 1 drops node 3's connection when its address changes")
        write_peers(n1, [line["node1"], line["node2"], line["node3"]])
        hup(n1)
        t.check(wait_for(lambda: all_connected(n1, ["node2", "node3"])), "and connects again once it is back")

        # 5. node 2 retired
        refused_before = sum(n.log_text(whole=True).count("unknown key refused")
                             for n in (n1, n3) if n2.public_key() < n.public_key())
        write_peers(n1, [line["node1"], line["node3"]])
        write_peers(n3, [line["node1"], line["node3"]])
        hup(n1)
        hup(n3)
        t.check(wait_for(lambda: peer_names(n1) == ["node3"] and peer_names(n3) == ["node1"]),
                "nodes 1 and 3 list only each other")
        t.check(wait_for(lambda: not any(p["connected"] for p in (n2.status(quiet=True) or {}).get("peers", [{}]))),
                "node 2 is connected to nobody")
        n2.deliver(USER, b"Subject: on the retired node\r\n\r\nbody\r\n")
        n1.deliver(USER, b"Subject: after the retirement\r\n\r\nbody\r\n")
        t.check(cl.wait_converged(nodes=[n1, n3]), "nodes 1 and 3 still converge")
        time.sleep(1)
        t.check(count(n1) == 33 and count(n3) == 33,
                "the retired node's new message reached neither (%d, %d; 33 expected)" % (count(n1), count(n3)))
        t.check('disconnected peer=node2 reason="removed from the peers file"' in n1.log_text(whole=True) + n3.log_text(whole=True),
                "node 2's connection was dropped")
        # node 2 dials the nodes whose key sorts higher (node/peer.c); the others it
        # only knocks on, and a knock from an unlisted node is dropped unanswered
        dialed = [n for n in (n1, n3) if n2.public_key() < n.public_key()]
        if dialed:
            t.check(wait_for(lambda: sum(n.log_text(whole=True).count("unknown key refused") for n in dialed) > refused_before),
                    "and node 2 is refused when it dials again (by %s)" % ", ".join("node%d" % n.i for n in dialed))
        else:
            print("info: node 2 dials neither node 1 nor node 3 (its key sorts higher): nothing to refuse")
        t.check(wait_for(lambda: same_members(n1) and same_members(n3)),
                "nodes 1 and 3 count the same members again")

        # 6. clean stops
        for n in cl.nodes:
            rc = n.stop()
            t.check(rc == 0, "node%d stops with status 0 (%s)" % (n.i, rc))
    finally:
        cl.close(keep_on_failure=os.environ.get("KEEP") == "1" and t.failed > failed_before)


def main():
    mmtest.exit_on_sigterm()
    t = mmtest.Report("it_daemon_members")
    t.run(members_test)
    t.finish()


if __name__ == "__main__":
    main()
