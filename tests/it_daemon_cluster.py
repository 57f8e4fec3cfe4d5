"""Real daemons on loopback (ports 22000-22049): 3 and 5 nodes under a random workload of
deliveries, flag and keyword changes, expunges and folder operations on random nodes,
including concurrent changes of different flags of one message on two nodes.  Every node
must end with the same Maildir content (bodies, flags, keywords, mtimes), no expunged
message anywhere, every other delivered message everywhere, and the same roots.  The
3-node run has imap_uids off; in the 5-node run (imap_uids on, the default) every node must
also end with the same UIDVALIDITY and UID -> message map in every dovecot-uidlist."""
import hashlib
import os
import random
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

USERS = ["example.org/alice", "example.org/bob", "example.net/carol"]


def sha(b):
    return hashlib.sha256(b).hexdigest()[:16]


def workload(t, cl, rnd, ops):
    delivered = {}   # sha -> (user, folder)
    expunged = set()
    folders = {u: ["INBOX"] for u in USERS}
    removed = set()  # (user, folder) removed at some point: rm -rf may take a message
                     # that arrived from a peer just after the "empty" check
    n = len(cl.nodes)
    for i in range(ops):
        node = cl.nodes[rnd.randrange(n)]
        user = rnd.choice(USERS)
        r = rnd.random()
        if r < 0.5 or not delivered:
            folder = rnd.choice(folders[user])
            body = mmtest.message(len(delivered) + 1000 * n, rnd=rnd)
            node.deliver(user, body, folder, mtime=1700000000 + rnd.randrange(10 ** 7))
            delivered[sha(body)] = (user, folder)
        elif r < 0.75:
            folder = rnd.choice(folders[user])
            files = node.files(user, folder)
            if files:
                sub, name = rnd.choice(files)
                letters = "".join(c for c in "DFPRST" if rnd.random() < 0.3)
                if rnd.random() < 0.3:
                    letters += node.add_keyword(user, folder, rnd.choice(["$Junk", "work", "$label1"]))
                try:
                    node.set_flags(user, folder, sub, name, letters)
                except FileNotFoundError:
                    pass  # the daemon moved it meanwhile (a remote flag change)
        elif r < 0.9:
            folder = rnd.choice(folders[user])
            files = node.files(user, folder)
            if files:
                sub, name = rnd.choice(files)
                path = os.path.join(node.maildir(user, folder), sub, name)
                try:
                    with open(path, "rb") as f:
                        h = sha(f.read())
                    node.expunge(user, folder, sub, name)
                    expunged.add(h)
                except FileNotFoundError:
                    pass
        elif r < 0.97:
            name = "Archive.%d" % rnd.randrange(3)
            if name not in folders[user]:
                node.ensure_folder(user, name)
                folders[user].append(name)
        else:
            extra = [f for f in folders[user] if f != "INBOX"]
            if extra:
                f = rnd.choice(extra)
                # Deleting a folder: only once it is empty here, as an IMAP DELETE would.
                if not node.files(user, f):
                    shutil.rmtree(node.maildir(user, f), ignore_errors=True)
                    folders[user].remove(f)
                    removed.add((user, f))
        if i % 10 == 0:
            time.sleep(0.02 * rnd.random())
    # Messages of a removed folder may legitimately be gone with it.
    delivered = {h: uf for h, uf in delivered.items() if uf not in removed}
    return delivered, expunged


def check_outcome(t, cl, delivered, expunged, label):
    ok = cl.wait_converged(timeout=90)
    if not t.check(ok, "%s: all nodes converge (same roots, same Maildir content)" % label):
        cl.explain()
        return False
    content = cl.nodes[0].content()
    present = set()
    dups = 0
    for msgs in content.values():
        hs = [m[0] for m in msgs]
        dups += len(hs) - len(set(hs))
        present.update(hs)
    t.check(not (present & expunged), "%s: no expunged message is present anywhere" % label)
    # A message can legitimately vanish only through an expunge or a folder delete.
    lost = [h for h in delivered if h not in present and h not in expunged]
    t.check(not lost, "%s: every delivered, unexpunged message is present (%d lost: %s)" %
            (label, len(lost), [(h, delivered[h]) for h in lost][:5]))
    t.check(dups == 0, "%s: no message is duplicated (%d)" % (label, dups))
    roots = cl.agreed_roots()
    t.check(len(set(roots)) == 1 and roots[0], "%s: identical roots %s" % (label, roots[0][:16] if roots[0] else None))
    # nodes of one version never send what the other cannot take or does not know
    odd = [(n.i, p["name"], p["protocol_errors"], p["later_messages"])
           for n in cl.nodes for p in (n.status(quiet=True) or {}).get("peers", [])
           if p["protocol_errors"] or p["later_messages"]]
    t.check(not odd, "%s: no protocol error, no message of an unknown type (%s)" % (label, odd))
    return True


def concurrent_flags(t, cl, label):
    """\\Seen on one node and \\Flagged on another, at the same moment: both survive."""
    a, b = cl.nodes[1], cl.nodes[2]
    user = "example.org/alice"
    body = mmtest.message(999999)
    cl.nodes[0].deliver(user, body)
    deadline = time.time() + 30 * mmtest.SLOW
    fa = fb = None
    while time.time() < deadline:
        fa = [f for f in a.files(user) if f[1].find("node") < 0 or True]
        fa = [f for f in a.files(user) if sha(open(os.path.join(a.maildir(user), f[0], f[1]), "rb").read()) == sha(body)]
        fb = [f for f in b.files(user) if sha(open(os.path.join(b.maildir(user), f[0], f[1]), "rb").read()) == sha(body)]
        if fa and fb:
            break
        time.sleep(0.05)
    if not t.check(bool(fa and fb), "%s: message reached nodes 2 and 3" % label):
        return
    a.set_flags(user, "INBOX", fa[0][0], fa[0][1], "S")
    b.set_flags(user, "INBOX", fb[0][0], fb[0][1], "F")
    ok = cl.wait_converged(timeout=60)
    if not t.check(ok, "%s: converged after concurrent flag changes" % label):
        cl.explain()
    flags = [m[1] for m in cl.nodes[0].content()[(user, "INBOX")] if m[0] == sha(body)]
    t.check(flags == ["FS"], "%s: both concurrent flags kept (got %s)" % (label, flags))


def new_user_in_steps(t, cl, label):
    """A user's Maildir created the way an MDA may do it while the daemons run: the user
    directory first, its cur/ new/ tmp/ a moment later, then a delivery.  It must reach
    the other nodes within seconds, not at the 60 s safety rescan."""
    user = "example.com/late%d" % len(cl.nodes)
    root = cl.nodes[0].maildir(user)
    os.makedirs(root)
    time.sleep(0.05)
    body = mmtest.message(424242)
    cl.nodes[0].deliver(user, body)
    deadline = time.time() + 10 * mmtest.SLOW
    seen = False
    while time.time() < deadline and not seen:
        seen = all(n.files(user) for n in cl.nodes[1:])
        time.sleep(0.05)
    t.check(seen, "%s: a user whose Maildir appears in steps is replicated within seconds" % label)


def check_uids(t, cl, label):
    """imap_uids: every node lists every message under one UID, the same on every node,
    with the same UIDVALIDITY, once the cluster is quiet (the UID authority may still be
    moving a few messages when the contents first agree)."""
    deadline = time.time() + 60 * mmtest.SLOW
    maps = None
    while time.time() < deadline:
        maps = [n.uid_maps() for n in cl.nodes]
        if all(m == maps[0] for m in maps[1:]) and all(
                v and all(uid and h for uid, h in v[1]) and len(set(u for u, _ in v[1])) == len(v[1])
                for v in maps[0].values()):
            break
        time.sleep(0.25)
    same = all(m == maps[0] for m in maps[1:])
    if not same:
        for k in sorted(maps[0]):
            vals = [m.get(k) for m in maps]
            if any(v != vals[0] for v in vals):
                print("%s %s:" % k)
                for i, v in enumerate(vals):
                    print("  node%d %s" % (i + 1, v))
                break
    t.check(same, "%s: every node shows the same UIDVALIDITY and UID -> message map" % label)
    listed = all(v and all(uid and h for uid, h in v[1]) for v in maps[0].values())
    t.check(listed, "%s: every message is listed under a UID, every listed UID has its file" % label)
    uids = sum(len(v[1]) for v in maps[0].values() if v)
    top = max((max((u for u, _ in v[1]), default=0) for v in maps[0].values() if v), default=0)
    print("%s: %d messages listed, highest UID %d" % (label, uids, top))


def cluster_test(t, n, base_port, ops, seed, imap_uids=True):
    label = "%d nodes%s" % (n, "" if imap_uids else ", imap_uids = no")
    rnd = random.Random(seed)
    print("seed %d" % seed, flush=True)
    cl = mmtest.Cluster(n, base_port, name="cluster%d" % n)
    if not imap_uids:
        for node in cl.nodes:
            cl.set_conf(node, "imap_uids", "no")
    failed_before = t.failed
    try:
        cl.start()
        delivered, expunged = workload(t, cl, rnd, ops)
        if not check_outcome(t, cl, delivered, expunged, label):
            return  # what follows would only wait out its own bounds on the same cause
        if imap_uids:
            check_uids(t, cl, label)
        concurrent_flags(t, cl, label)
        new_user_in_steps(t, cl, label)
        codes = [node.stop() for node in cl.nodes]
        t.check(codes == [0] * n, "%s: every daemon stops cleanly on SIGTERM with no leaked handle (%s)" % (label, codes))
    finally:
        cl.close(keep_on_failure=t.failed > failed_before and os.environ.get("KEEP") == "1")


def main():
    t = mmtest.Report("it_daemon_cluster")
    seed = int(os.environ.get("MM_SEED", random.randrange(1 << 31)))
    # imap_uids off (each Dovecot numbers its own), then on (the default); seed 71 of the
    # 5-node run made the first UID rule chase forever
    if os.environ.get("MM_ONLY_UIDS") != "1":
        t.run(cluster_test, 3, 22000, 150, seed, False)
    t.run(cluster_test, 5, 22010, 120, int(os.environ.get("MM_UID_SEED", seed + 1)))
    t.finish()


if __name__ == "__main__":
    main()
