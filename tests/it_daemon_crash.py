"""it_daemon_crash.py — kill -9 in the middle of a large sync, then restart: it converges,
nothing is lost and nothing is duplicated.  Real daemons on loopback, ports 22050-22059.

1. The receiver dies: node1 holds a few thousand messages (two users, two folders, flags
   and keywords); node2 has caught up; node3 starts empty and is killed with SIGKILL
   three times while it pulls (after about 10 %, 40 % and 70 % of the messages arrived).
   While it is down, node1 gets new mail, flag changes and expunges.  Restarted, node3
   converges with the others.
2. The sender dies: node1 alone holds the mail; node2 starts empty and node1 is killed
   with SIGKILL when node2 has about a third; node1 restarts, node3 joins, all converge.

After each, every node's Maildirs must hold exactly the expected messages: each delivered
and not expunged body once, in its folder, with its flags (no loss, no duplicate, no
half-written or unknown file, no expunged message back), the same roots, and every daemon
stops cleanly on SIGTERM.  Prints `N passed, N failed`."""
import hashlib
import os
import random
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

USERS = ["example.org/alice", "example.net/bob"]
FOLDERS = ["INBOX", "Archive"]
# As many under ASan: a pull of 1,500 went by between two polls there once the
# restarted node stopped waiting on its own dead uidlist lock.
N_MSGS = int(os.environ.get("MM_CRASH_MSGS", "3000"))


def sha(b):
    return hashlib.sha256(b).hexdigest()[:16]


def populate(node, rnd, n, first=0):
    """Delivers n messages into node's Maildirs; some get flags and a keyword.
    Returns {sha: (user, folder, flags, keywords)}."""
    expected = {}
    for i in range(first, first + n):
        user = rnd.choice(USERS)
        folder = FOLDERS[0] if rnd.random() < 0.8 else FOLDERS[1]
        size = 300000 if i % 500 == 7 else rnd.randrange(1000, 16000)
        body = mmtest.message(i, size=size, rnd=rnd)
        name = node.deliver(user, body, folder, mtime=1700000000 + rnd.randrange(10 ** 7))
        flags, kws = "", ()
        if rnd.random() < 0.15:
            flags = rnd.choice(["S", "F", "FS", "RS"])
            letters = flags
            if rnd.random() < 0.3:
                letters += node.add_keyword(user, folder, "work")
                kws = ("work",)
            node.set_flags(user, folder, "new", name, letters)
        expected[sha(body)] = (user, folder, flags, kws)
    return expected


def find_file(node, user, folder, h):
    """(subdir, name) of the message with body hash h, or None."""
    md = node.maildir(user, folder)
    for sub, name in node.files(user, folder):
        try:
            with open(os.path.join(md, sub, name), "rb") as f:
                if sha(f.read()) == h:
                    return sub, name
        except FileNotFoundError:
            pass
    return None


def change_while_down(node, rnd, expected, n_new, n_flag, n_exp, first):
    """On a running node: new deliveries, flag changes and expunges; updates expected and
    returns the set of expunged hashes."""
    expected.update(populate(node, rnd, n_new, first))
    keys = sorted(expected)
    rnd.shuffle(keys)
    for h in keys[:n_flag]:
        user, folder, flags, kws = expected[h]
        f = find_file(node, user, folder, h)
        if f:
            node.set_flags(user, folder, f[0], f[1], "FS")  # drops any keyword letter
            expected[h] = (user, folder, "FS", ())
    expunged = set()
    for h in keys[n_flag:n_flag + n_exp]:
        user, folder, _, _ = expected[h]
        f = find_file(node, user, folder, h)
        if f:
            node.expunge(user, folder, f[0], f[1])
            del expected[h]
            expunged.add(h)
    return expunged


def tally(node, expected, expunged, detail=None):
    """(lost, dups, unknown, back, misplaced, wrong_flags) of the node's Maildirs against
    `expected`; each message with other flags described in `detail` when given."""
    content = node.content()
    seen = {}
    dups = unknown = misplaced = wrong_flags = 0
    for (user, folder), msgs in content.items():
        for h, flags, kws, _mtime in msgs:
            if h in seen:
                dups += 1
                continue
            seen[h] = True
            if h not in expected:
                unknown += 1
                continue
            eu, ef, efl, ekw = expected[h]
            if (eu, ef) != (user, folder):
                misplaced += 1
            elif (efl, ekw) != (flags, kws):
                wrong_flags += 1
                if detail is not None:
                    detail.append("%s %s/%s: flags %r keywords %r, expected %r %r" % (
                        h[:16], user, folder, flags, kws, efl, ekw))
    lost = sum(1 for h in expected if h not in seen)
    back = sum(1 for h in expunged if h in seen)
    return lost, dups, unknown, back, misplaced, wrong_flags


def check_exact(t, node, expected, expunged, label):
    """The node's Maildirs hold exactly `expected`: each body once, in its folder, with its
    flags and keywords; nothing expunged, nothing unknown.  A listing is taken file by
    file: one taken while the daemon renames or re-files messages (a UID move right
    after convergence re-files on every node) misses those in flight, so the node is
    read again, for a bounded time, until it is exact; a read that needed more than one
    look is reported (info), so a wave of renames stays visible in the log."""
    deadline = time.time() + 30 * mmtest.SLOW
    first = r = tally(node, expected, expunged)
    looks = 1
    while any(r) and time.time() < deadline:
        time.sleep(0.25)
        r = tally(node, expected, expunged)
        looks += 1
    if looks > 1:
        print("info: %s: node%d read %d times; the first read had %d missing, %d duplicated, %d unknown, "
              "%d misplaced, %d with other flags" % (label, node.i, looks, first[0], first[1], first[2],
                                                     first[4], first[5]), flush=True)
    lost, dups, unknown, back, misplaced, wrong_flags = r
    if wrong_flags:
        detail = []
        tally(node, expected, expunged, detail)
        for line in detail[:10]:
            print("info: %s: node%d %s" % (label, node.i, line), flush=True)
    t.check(lost == 0, "%s: node%d lost nothing (%d of %d missing)" % (label, node.i, lost, len(expected)))
    t.check(dups == 0, "%s: node%d has no duplicate (%d)" % (label, node.i, dups))
    t.check(unknown - back == 0, "%s: node%d has no unknown or half-written message (%d)" % (label, node.i, unknown - back))
    t.check(back == 0, "%s: node%d has no expunged message back (%d)" % (label, node.i, back))
    t.check(misplaced == 0 and wrong_flags == 0,
            "%s: node%d every message in its folder with its flags (%d misplaced, %d wrong flags)" %
            (label, node.i, misplaced, wrong_flags))


def wait_count(node, target, timeout=120):
    """Polls until node holds at least target message files; returns the count seen."""
    deadline = time.time() + timeout * mmtest.SLOW
    c = node.message_count()
    while c < target and time.time() < deadline:
        if node.proc is None or node.proc.poll() is not None:
            break
        time.sleep(0.003)
        c = node.message_count()
    return c


def finish(t, cl, expected, expunged, label):
    ok = cl.wait_converged(timeout=120)
    if not t.check(ok, "%s: all nodes converge after the restart" % label):
        cl.explain()
    for node in cl.nodes:
        check_exact(t, node, expected, expunged, label)
    # a node that has just caught up plans its folders again and may still ask for a
    # UID move or two (docs/design.md): the roots must come together again.  Each look
    # reads all roots at once; converged() and a later roots() could straddle a move.
    roots = cl.agreed_roots(timeout=60)
    t.check(len(set(roots)) == 1 and roots[0], "%s: identical roots (%s)" % (label, roots))
    tmp_left = 0
    for node in cl.nodes:
        for dirpath, _, filenames in os.walk(node.mail):
            if os.path.basename(dirpath) == "tmp":
                tmp_left += len(filenames)
    print("info: %s: %d file(s) left in tmp/ directories" % (label, tmp_left), flush=True)
    # UID churn: each move re-files the message on every node (clients see it as an
    # expunge and a new message); a node catching up must not cause it
    moves = [node.log_text().count(" moves from UID ") for node in cl.nodes]
    recovered = sum(len(re.findall(r"(\d+) bodies recovered from tmp/", node.log_text())) for node in cl.nodes)
    print("info: %s: UID moves by node %s; %d start(s) took bodies back from tmp/" % (label, moves, recovered),
          flush=True)
    codes = [node.stop() for node in cl.nodes]
    t.check(codes == [0] * len(cl.nodes), "%s: every daemon stops cleanly on SIGTERM (%s)" % (label, codes))


def receiver_dies(t, seed):
    label = "receiver killed"
    rnd = random.Random(seed)
    cl = mmtest.Cluster(3, 22050, name="crash-recv")
    failed_before = t.failed
    try:
        n1, n2, n3 = cl.nodes
        expected = populate(n1, rnd, N_MSGS)
        total = len(expected)
        n1.start()
        n2.start()
        if not t.check(cl.wait_converged(timeout=120, nodes=[n1, n2]), "%s: node2 catches up with node1" % label):
            cl.explain([n1, n2])
            return
        mid = 0  # kills that landed while node3 still had messages to pull
        for frac in (0.1, 0.4, 0.7):
            n3.start()
            # aim at frac of the whole, but always within what is still to come: a
            # restarted node can place a batch of bodies (held for UID order, taken
            # back from tmp/) at once and overshoot a fixed target
            start = n3.message_count()
            if start >= total:
                # it took back its bodies from tmp/ and pulled the rest before its
                # status answered: no middle left to aim at (the kill still tests a
                # restart of a complete node)
                n3.kill9()
                print("info: node3 held every message at its start (%d of %d): this kill is "
                      "not in the middle" % (start, total), flush=True)
                continue
            target = max(int(total * frac), start + 1)
            target = min(target, start + max(1, (total - start) // 3))
            c = wait_count(n3, target)
            n3.kill9()
            after = n3.message_count()
            # A node places the bodies it received in batches, gathered for up to 100 ms
            # (node/bodies.c): from a count below the target, one batch can bring all
            # that was left (248 once, in CI), and the kill lands after the end.  So each
            # kill is reported, and at least one of the three must land in the middle.
            mid += c < total
            print("info: node3 killed with %d of %d messages (%d at its start, %d on disk after)%s" %
                  (c, total, start, after, "" if c < total else ": after the end, one batch brought the rest"),
                  flush=True)
        t.check(mid >= 1, "%s: kill -9 landed in the middle of the sync (%d of 3 kills)" % (label, mid))
        expunged = change_while_down(n1, rnd, expected, 60, 40, 40, first=N_MSGS)
        n3.start()
        finish(t, cl, expected, expunged, label)
    finally:
        cl.close(keep_on_failure=t.failed > failed_before and os.environ.get("KEEP") == "1")


def sender_dies(t, seed):
    label = "sender killed"
    rnd = random.Random(seed)
    cl = mmtest.Cluster(3, 22055, name="crash-send")
    failed_before = t.failed
    try:
        n1, n2, n3 = cl.nodes
        expected = populate(n1, rnd, N_MSGS)
        total = len(expected)
        n1.start()
        n2.start()
        c = wait_count(n2, total // 3)
        n1.kill9()
        time.sleep(0.2)
        after = n2.message_count()
        print("info: node1 killed when node2 had %d of %d messages (%d a moment later)" % (c, total, after), flush=True)
        t.check(total // 3 <= c < total, "%s: kill -9 landed in the middle of the sync (%d of %d)" % (label, c, total))
        n1.start()
        n3.start()
        finish(t, cl, expected, set(), label)
    finally:
        cl.close(keep_on_failure=t.failed > failed_before and os.environ.get("KEEP") == "1")


def main():
    t = mmtest.Report("it_daemon_crash")
    mmtest.exit_on_sigterm()
    seed = int(os.environ.get("MM_SEED", random.randrange(1 << 31)))
    print("seed %d" % seed, flush=True)
    t.run(receiver_dies, seed)
    t.run(sender_dies, seed + 1)
    t.finish()


if __name__ == "__main__":
    main()
