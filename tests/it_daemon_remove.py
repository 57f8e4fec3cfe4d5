"""it_daemon_remove.py — `mailmesh remove-user` removes a user from every node
(docs/operations.md, "Removing or renaming a user").  Real daemons on loopback,
ports 22190-22199.

1. Three nodes hold alice's 8 messages (INBOX, Archive) and bob's 2.
2. Node 3 stopped.  Without --yes the command only says what it would remove (exit
   1, nothing removed); an unknown user is an error.
3. With --yes on node 1: alice's Maildir goes on nodes 1 and 2, bob's mail stays.
4. Node 3 started again: its copy of alice goes too, nothing comes back anywhere.
5. A delivery for a new alice on node 2: every node gets that one message and
   nothing of the old alice.
6. bob renamed robert: his Maildir moved on node 3, then, in sync, remove-user bob
   there: robert's mail on every node, bob gone.
7. All stop with status 0.
Prints `N passed, N failed`."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

BASE = 22190
ALICE = "example.org/alice"
BOB = "example.org/bob"
ROBERT = "example.org/robert"


def count(node, user):
    return len(node.files(user)) + len(node.files(user, "Archive"))


wait_for = mmtest.wait_for


def remove_test(t):
    failed_before = t.failed
    cl = mmtest.Cluster(3, BASE, name="remove")
    try:
        n1, n2, n3 = cl.nodes
        # 1. in sync
        cl.start()
        for i in range(6):
            n1.deliver(ALICE, mmtest.message(i))
        for i in range(2):
            n2.deliver(ALICE, mmtest.message(10 + i), folder="Archive")
            n3.deliver(BOB, mmtest.message(20 + i))
        t.check(cl.wait_converged(timeout=30), "three nodes hold alice's 8 messages and bob's 2")

        # 2. node 3 away; a preview and an unknown user change nothing
        t.check(n3.stop() == 0, "node 3 stops")
        r = mmtest.run([mmtest.MAILMESH, "remove-user", "-c", n1.conf, ALICE])
        t.check(r.returncode == 1 and r.stdout.startswith("preview: not removed")
                and "8 messages in 2 folders" in r.stdout and "--yes" in r.stdout,
                "without --yes: exit 1, says what it would remove (%d: %s)" % (r.returncode, r.stdout.strip()))
        r = mmtest.run([mmtest.MAILMESH, "remove-user", "-c", n1.conf, "example.org/nobody", "--yes"])
        t.check(r.returncode == 1 and "no user 'example.org/nobody'" in r.stdout,
                "an unknown user: exit 1, said (%d: %s)" % (r.returncode, r.stdout.strip()))
        r = mmtest.run([mmtest.MAILMESH, "remove-user", "-c", n1.conf, "alice@example.org", "--yes"])
        t.check(r.returncode == 1 and "the address's user is example.org/alice here" in r.stdout,
                "an address: exit 1, names the user as the state does (%d: %s)" % (r.returncode, r.stdout.strip()))
        time.sleep(0.5 * mmtest.SLOW)
        t.check(count(n1, ALICE) == 8 and count(n2, ALICE) == 8, "nothing removed yet")

        # 3. removed
        r = mmtest.run([mmtest.MAILMESH, "remove-user", "-c", n1.conf, ALICE, "--yes"])
        t.check(r.returncode == 0 and r.stdout.startswith("ok: %s removed" % ALICE),
                "with --yes: exit 0 (%d: %s)" % (r.returncode, r.stdout.strip()))
        gone = wait_for(lambda: not os.path.exists(n1.maildir(ALICE)) and not os.path.exists(n2.maildir(ALICE)))
        t.check(gone, "alice's Maildir is gone on nodes 1 and 2")
        t.check(count(n1, BOB) == 2 and count(n2, BOB) == 2, "bob's mail stays")
        t.check("removed from the cluster (mailmesh remove-user)" in n1.log_text(whole=True),
                "node 1's log says who removed alice")
        r = mmtest.run([mmtest.MAILMESH, "remove-user", "-c", n2.conf, ALICE, "--yes"])
        t.check(r.returncode == 1 and "removed from the cluster already" in r.stdout,
                "remove-user of alice again, on node 2: refused (%d: %s)" % (r.returncode, r.stdout.strip()))
        st = n2.status() or {}
        flags = {u["user"]: u.get("removed") for u in st.get("user_roots", [])}
        t.check(flags.get(ALICE) is True and flags.get(BOB) is False,
                "node 2's status shows alice removed, bob not (%s)" % flags)

        # 4. node 3 back
        n3.start()
        t.check(wait_for(lambda: not os.path.exists(n3.maildir(ALICE))), "node 3 back: its copy of alice goes")
        t.check(cl.wait_converged(timeout=30), "the three nodes converge")
        time.sleep(1.5 * mmtest.SLOW)
        t.check(not any(os.path.exists(n.maildir(ALICE)) for n in cl.nodes),
                "nothing of alice comes back on any node")

        # 5. a new alice
        n2.deliver(ALICE, mmtest.message(30))
        ok = cl.wait_converged(timeout=30) and all(count(n, ALICE) == 1 for n in cl.nodes)
        t.check(ok, "a new alice on node 2: every node holds her one message (%s)"
                % [count(n, ALICE) if os.path.exists(n.maildir(ALICE)) else None for n in cl.nodes])
        t.check(not any(os.path.exists(n.maildir(ALICE, "Archive")) for n in cl.nodes),
                "and no Archive of the old alice")

        # 6. bob renamed robert on node 3, as docs/operations.md says: mv, in sync, remove
        os.rename(n3.maildir(BOB), n3.maildir(ROBERT))
        # (not converged: bob is still on nodes 1 and 2, absent on node 3)
        ok = wait_for(lambda: all(os.path.exists(n.maildir(ROBERT)) and count(n, ROBERT) == 2 for n in cl.nodes))
        t.check(ok, "bob's Maildir moved to robert on node 3: every node holds robert's 2 messages (%s)"
                % [count(n, ROBERT) for n in cl.nodes])
        t.check(count(n1, BOB) == 2, "bob stays on node 1 meanwhile")
        r = mmtest.run([mmtest.MAILMESH, "remove-user", "-c", n3.conf, BOB, "--yes"])
        t.check(r.returncode == 0 and "is not here now" in r.stdout,
                "remove-user bob on node 3, where bob is absent (%d: %s)" % (r.returncode, r.stdout.strip()))
        ok = wait_for(lambda: not os.path.exists(n1.maildir(BOB)) and not os.path.exists(n2.maildir(BOB)))
        t.check(ok and cl.wait_converged(timeout=30) and all(count(n, ROBERT) == 2 for n in cl.nodes),
                "bob is gone from nodes 1 and 2, robert's 2 messages stay on every node")

        # 7. clean stops
        codes = [n.stop() for n in cl.nodes]
        t.check(codes == [0, 0, 0], "all stop with status 0 (%s)" % codes)
    finally:
        cl.close(keep_on_failure=os.environ.get("KEEP") == "1" and t.failed > failed_before)


def main():
    mmtest.exit_on_sigterm()
    t = mmtest.Report("it_daemon_remove")
    t.run(remove_test)
    t.finish()


if __name__ == "__main__":
    main()
