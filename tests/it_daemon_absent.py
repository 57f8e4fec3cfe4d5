"""it_daemon_absent.py — a user's Maildir that is gone is not deleted mail
(docs/maildir.md, "A user's Maildir gone"; docs/operations.md, "A user's Maildir").
Real daemons on loopback, ports 22180-22189.

1. Nodes 1 and 2 hold alice's 8 messages (INBOX and Archive).
2. Node 2 stopped, alice's Maildir removed (rm -rf), node 2 started; node 1 gets a
   new message.  Node 2 expunges nothing (node 1 keeps all 9), makes nothing for
   alice and says in its log that her Maildir is gone.
3. An empty Maildir made for alice on node 2: every message is fetched again.
4. Node 2's mail root "unmounted" under the running daemon (moved away, an empty
   mount point left), while node 1 expunges one message, flags another and gets a new
   one: node 1 loses nothing else, nothing is written under the empty mount point.
5. Mounted again: node 2 mirrors the three changes and both are identical.
6. Both stop with status 0.
Before node/store.c user_present, step 3's Maildir (or any delivery) made node 2
expunge alice's old mail on both nodes, and step 4 deleted her Archive everywhere.
Prints `N passed, N failed`."""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

BASE = 22180
USER = "example.org/alice"


def count(node):
    return len(node.files(USER)) + len(node.files(USER, "Archive"))


def absent_test(t):
    failed_before = t.failed
    cl = mmtest.Cluster(2, BASE, name="absent")
    try:
        n1, n2 = cl.nodes
        # 1. in sync
        cl.start()
        for i in range(6):
            n1.deliver(USER, mmtest.message(i))
        for i in range(2):
            n1.deliver(USER, mmtest.message(10 + i), folder="Archive")
        t.check(cl.wait_converged(timeout=30), "nodes 1 and 2 hold alice's 8 messages")

        # 2. removed while node 2 was stopped
        t.check(n2.stop() == 0, "node 2 stops")
        shutil.rmtree(n2.maildir(USER))
        before = len(n2.log_text(whole=True))
        n2.start()
        time.sleep(1.5 * mmtest.SLOW)
        n1.deliver(USER, mmtest.message(20))
        time.sleep(3 * mmtest.SLOW)
        log2 = n2.log_text(whole=True)[before:]
        t.check(count(n1) == 9, "node 1 keeps all 9 messages (%d)" % count(n1))
        t.check(not os.path.exists(n2.maildir(USER)), "node 2 makes nothing for alice")
        t.check("is gone: nothing of %s is expunged" % USER in log2, "node 2's log says her Maildir is gone")

        # 3. made again, empty: everything comes back
        n2.ensure_folder(USER)
        t.check(cl.wait_converged(timeout=30) and count(n2) == 9,
                "an empty Maildir made for alice on node 2: all 9 messages fetched again (%d)" % count(n2))

        # 4. the mail root "unmounted" under the running node 2
        away = n2.mail + ".away"
        os.rename(n2.mail, away)
        os.mkdir(n2.mail)
        time.sleep(1.5 * mmtest.SLOW)
        inbox = n1.files(USER)
        n1.expunge(USER, "INBOX", *inbox[0])
        n1.set_flags(USER, "INBOX", inbox[1][0], inbox[1][1], "FS")
        n1.deliver(USER, mmtest.message(21))
        time.sleep(3 * mmtest.SLOW)
        t.check(count(n1) == 9 and len(n1.files(USER, "Archive")) == 2,
                "node 1 keeps everything else: 9 messages, 2 in Archive (%d, %d)"
                % (count(n1), len(n1.files(USER, "Archive"))))
        t.check(os.listdir(n2.mail) == [], "nothing is written under node 2's empty mount point (%s)"
                % os.listdir(n2.mail))

        # 5. mounted again
        os.rmdir(n2.mail)
        os.rename(away, n2.mail)
        t.check(cl.wait_converged(timeout=30) and count(n2) == 9,
                "mounted again, node 2 mirrors the expunge, the flags and the new message (%d)" % count(n2))

        # 6. clean stops
        codes = [n.stop() for n in cl.nodes]
        t.check(codes == [0, 0], "both stop with status 0 (%s)" % codes)
    finally:
        cl.close(keep_on_failure=os.environ.get("KEEP") == "1" and t.failed > failed_before)


def main():
    mmtest.exit_on_sigterm()
    t = mmtest.Report("it_daemon_absent")
    t.run(absent_test)
    t.finish()


if __name__ == "__main__":
    main()
