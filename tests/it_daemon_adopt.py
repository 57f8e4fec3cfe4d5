"""it_daemon_adopt.py — mailmesh first started on servers that already hold the same mail.

An admin moving to mailmesh usually has it already: a second server seeded with
`cp -a` or rsync from the first, or two servers Dovecot's dsync replicator kept alike
(other file names, the same UIDs and INTERNALDATEs).  Each daemon indexes its own
files with an empty state database; they must agree on every message at once, so the
first sync moves no body and duplicates nothing.  Real daemons on loopback, ports
22130-22139, `imap_uids = yes`.

node1 holds N_MSGS messages (two users, two folders, flags and keywords, a message
APPENDed twice with one INTERNALDATE), numbered by its daemon (dovecot-uidlist), takes
LIVE_MSGS deliveries while it runs, and is stopped.  node2 gets a `cp -a` of its Maildirs, node3 the same files under other
names with their dovecot-uidlist rewritten to match (what dsync makes).  All three start
with empty states: they must converge with every node holding exactly node1's mail (each
message as often as it was there, flags, keywords, mtimes), the same roots and UIDs,
no body sent between them, and a delivery afterwards reaches every node once.
Prints `N passed, N failed`."""
import os
import random
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

USERS = ["example.org/alice", "example.net/bob"]
FOLDERS = ["INBOX", "Archive"]
N_MSGS = int(os.environ.get("MM_ADOPT_MSGS", "400"))
LIVE_MSGS = 30


def populate(node, rnd):
    for i in range(N_MSGS):
        user, folder = rnd.choice(USERS), rnd.choice(FOLDERS)
        body = mmtest.message(i, size=rnd.randrange(500, 6000), rnd=rnd)
        mtime = 1600000000 + rnd.randrange(10 ** 8)
        name = node.deliver(user, body, folder, mtime=mtime)
        if i % 50 == 3:  # an APPEND made twice: Dovecot shows two messages
            node.deliver(user, body, folder, mtime=mtime)
        if rnd.random() < 0.25:
            letters = rnd.choice(["S", "FS", "RS"])
            if rnd.random() < 0.3:
                letters += node.add_keyword(user, folder, "work")
            node.set_flags(user, folder, "new", name, letters)


def dsync_copy(src, dst):
    """Copies the Maildir tree src to dst the way dsync leaves a replica: every message
    file under another name (mtime kept), dovecot-uidlist rewritten to list it there
    under the same UID."""
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    for root, dirs, files in os.walk(dst):
        if os.path.basename(root) not in ("cur", "new"):
            continue
        folder = os.path.dirname(root)
        renames = {}
        for f in files:
            base, sep, info = f.partition(":")
            nbase = base.replace(".M", ".Q", 1) + "x"
            os.rename(os.path.join(root, f), os.path.join(root, nbase + sep + info))
            renames[base] = nbase
        ul = os.path.join(folder, "dovecot-uidlist")
        if renames and os.path.exists(ul):
            with open(ul) as fh:
                lines = fh.read().splitlines()
            out = [lines[0]]
            for line in lines[1:]:
                head, sep, name = line.partition(" :")
                base, colon, info = name.partition(":")
                out.append(head + sep + renames.get(base, base) + colon + info)
            with open(ul, "w") as fh:
                fh.write("\n".join(out) + "\n")


def count_bodies(content):
    return sum(len(v) for v in content.values())


def bodies_in(node):
    st = node.status(quiet=True) or {}
    return sum(p.get("bodies_in", 0) for p in st.get("peers", []))


def adopt_test(t, cl):
    n1, n2, n3 = cl.nodes
    populate(n1, random.Random(int(os.environ.get("MM_SEED", "4242"))))
    n1.start()
    ok = all(mmtest.wait_uidlist([n1], u, f) for u in USERS for f in FOLDERS)
    t.check(ok, "node1 numbers its mail (dovecot-uidlist in every folder)")
    # and takes deliveries while it runs, each indexed within milliseconds (in the
    # second of its mtime: those once got stamps of their own, duplicated on a copy)
    rnd = random.Random(7)
    for i in range(LIVE_MSGS):
        n1.deliver(rnd.choice(USERS), mmtest.message(N_MSGS + i, size=rnd.randrange(500, 3000), rnd=rnd),
                   rnd.choice(FOLDERS))
        time.sleep(0.01)
    cl.wait_settled(nodes=[n1], timeout=60)
    t.check(n1.stop() == 0, "node1 stops cleanly")
    want = n1.content()
    t.check(count_bodies(want) > N_MSGS, "node1 holds %d messages, among them copies" % count_bodies(want))
    os.makedirs(n2.mail, exist_ok=True)
    r = mmtest.run(["cp", "-a", n1.mail + "/.", n2.mail])
    t.check(r.returncode == 0, "node2 gets a cp -a of node1's Maildirs")
    dsync_copy(n1.mail, n3.mail)
    t.check(n3.content() == want and sorted(os.listdir(n3.maildir(USERS[0]))) == sorted(os.listdir(n1.maildir(USERS[0])))
            and not set(x for _, x in n3.files(USERS[0])) & set(x for _, x in n1.files(USERS[0])),
            "node3 holds the same mail under other file names")
    for n in cl.nodes:
        n.start()
    ok = cl.wait_converged(timeout=90)
    if not t.check(ok, "the three nodes converge"):
        cl.explain()
    for n in cl.nodes:
        got = n.content()
        extra = count_bodies(got) - count_bodies(want)
        t.check(got == want, "node%d holds exactly node1's mail: each message as often, flags, keywords, mtimes "
                "(%+d messages)" % (n.i, extra))
    got = [bodies_in(n) for n in cl.nodes]
    t.check(got == [0, 0, 0], "no body was sent between them (bodies received %s)" % got)
    maps = [n.uid_maps() for n in cl.nodes]
    t.check(maps[0] == maps[1] == maps[2], "every node shows every message under the same UID")
    name = n2.deliver(USERS[0], mmtest.message(10 ** 6, size=900, rnd=random.Random(1)))
    ok = cl.wait_converged(timeout=60)
    t.check(ok and all(count_bodies(n.content()) == count_bodies(want) + 1 for n in cl.nodes),
            "a delivery on node2 afterwards reaches every node once (%s)" % name)


def main():
    t = mmtest.Report("it_daemon_adopt")
    mmtest.exit_on_sigterm()
    cl = mmtest.Cluster(3, 22130, name="adopt")
    failed = True
    try:
        for node in cl.nodes:
            cl.set_conf(node, "imap_uids", "yes")
        t.run(adopt_test, cl)
        codes = [node.stop() for node in cl.nodes]
        t.check(all(c in (0, None) for c in codes), "every daemon stops cleanly on SIGTERM (%s)" % codes)
        failed = t.failed > 0
    except Exception:
        import traceback
        traceback.print_exc()
        t.failed += 1
    finally:
        for node in cl.nodes:
            node.stop()
        cl.close(keep_on_failure=failed and os.environ.get("KEEP") == "1")
    t.finish()


if __name__ == "__main__":
    main()
