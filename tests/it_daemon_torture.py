"""it_daemon_torture.py — randomized crash-consistency torture of a 3-node cluster.
Real daemons on loopback, ports 22240-22249 (MM_TEST_BASE_PORT= moves them).

Each iteration runs a random workload for a while, then lets the cluster settle and
checks it.  The workload, as an MDA and an IMAP server through Dovecot would write the
Maildirs (tests/mmtest.py), on random nodes, running or stopped (the MDA and Dovecot
keep working while mailmesh is down):
- deliveries into INBOX or a folder, of various sizes (some above 40 KB, whose bodies
  are fetched instead of pushed inline; some of 1-3 MB), alone or in bursts;
- flag changes (renames to `:2,S`, `:2,FS`, ...) of a message on a node, from the
  letters that node shows, with keywords given a letter in `dovecot-keywords` first;
- expunges (unlink) and folder creations;
- kill -9 of a random node at random moments: between operations, in the middle of a
  burst of deliveries, while it receives a large body, right after a flag change on
  it; each killed node is started again after a random delay (0-3 s).

Then every node is started, and once the cluster is settled (same roots, no missing
body, identical Maildirs, quiet for 2 s) each node must hold:
- every message delivered and not expunged by anyone, once, in its folder;
- no expunged message, no unknown one;
- for every flag and keyword, the value the last operation that changed it set
  (operations on one message on two nodes within AMBIG_S of each other, or one whose
  node was killed before it could have seen it and another change of that flag was made
  before that node came back, may end either way: the daemon stamps a change when its
  scan sees it, docs/design.md "Per-flag registers"; those are logged as ambiguous);
- nothing left in tmp/; a `dovecot-uidlist` listing every file, the same UIDVALIDITY
  and UID -> message map on every node, and no UID ever given to another message
  (checked against every earlier iteration of the run).

Every operation is logged with its time (seconds since the start of the run) in the
op log, one JSON line each; on a failure its last 40 lines are printed, and with
MM_TORTURE_KEEP=DIR the whole op log and the nodes' logs are copied to DIR.  Nothing
else is left behind (daemons stopped, temp directories removed, also on a failure).
The workload is drawn from the seed, but what it acts on depends on what the daemons
did meanwhile (timing): a seed replays the same kind of run, not the same one; the op
log says what happened, in order, to the millisecond.

Default (CI, `make test`): seed 1, 2 iterations of 6 s, about 35 s in all.  Long runs:
    MM_TORTURE_SEED=7 MM_TORTURE_ITERS=50 MM_TORTURE_SECS=20 \
        BUILD=build MAILMESH_TOP=$PWD MAILMESH=$PWD/build/mailmesh \
        /usr/bin/python3 tests/it_daemon_torture.py
(MM_TORTURE_SEED=random picks one and prints it).  Prints `N passed, N failed`."""
import hashlib
import json
import os
import random
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

BASE = int(os.environ.get("MM_TEST_BASE_PORT", "22240"))
USERS = ["example.org/alice", "example.net/bob"]
KEYWORDS = ["work", "todo", "$Label1", "later"]
SYS = "DFRST"          # system flags a client sets (not P: drafts are rare, it would do)
AMBIG_S = 1.0          # two nodes changing one flag this close: either may win
SCAN_S = 2.0           # a node killed this soon after a change may not have seen it


def sha(b):
    return hashlib.sha256(b).hexdigest()[:16]


class Torture:
    def __init__(self, t, seed, secs):
        self.t = t
        self.seed = seed
        self.secs = secs
        self.rnd = random.Random(seed)
        self.cl = mmtest.Cluster(3, BASE, name="torture")
        self.t0 = time.time()
        self.oplog = open(os.path.join(self.cl.dir, "ops.log"), "w")
        self.n = 0                     # messages made so far
        self.msgs = {}                 # sha -> dict(user, folder, live, flags{letter: [(t, node, val)]}, kws{...})
        self.folders = {u: ["INBOX"] for u in USERS}
        self.restart_at = {}           # node index -> time to start it again
        self.kills = []                # (node, kill time, start time or None)
        self.base_sha = [{} for _ in self.cl.nodes]   # per node: base name -> sha (bases are stable)
        self.uid_seen = {}             # (user, folder, uidvalidity, uid) -> sha
        self.counts = {}
        self.ambiguous = 0

    # ---- logging ----

    def log(self, op, **kw):
        kw["t"] = round(time.time() - self.t0, 3)
        kw["op"] = op
        self.oplog.write(json.dumps(kw, sort_keys=True) + "\n")
        self.oplog.flush()
        self.counts[op] = self.counts.get(op, 0) + 1

    # ---- nodes ----

    def running(self):
        return [n for n in self.cl.nodes if n.proc is not None]

    def kill(self, node, why):
        if node.proc is None:
            return
        node.kill9()
        delay = self.rnd.choice([0, 0.1, 0.5, 1, 2, 3]) * self.rnd.random()
        self.restart_at[node.i] = time.time() + delay
        self.kills.append([node.i, time.time(), None])
        self.log("kill", node=node.i, why=why, restart_in=round(delay, 3))

    def start(self, node):
        node.start()
        self.restart_at.pop(node.i, None)
        for k in self.kills:
            if k[0] == node.i and k[2] is None:
                k[2] = time.time()
        self.log("start", node=node.i)

    def restarts_due(self, force=False):
        for node in self.cl.nodes:
            if node.proc is None and (force or self.restart_at.get(node.i, 0) <= time.time()):
                self.start(node)

    # ---- the Maildirs ----

    def body(self, i, size):
        return mmtest.message(i, size=size, rnd=random.Random(self.seed * 1000003 + i))

    def find(self, node, user, folder, h):
        """(sub, name) of the file holding h on node, or None."""
        md = node.maildir(user, folder)
        cache = self.base_sha[node.i - 1]
        for sub, name in node.files(user, folder):
            base = name.split(":")[0]
            key = (user, folder, base)
            if key not in cache:
                try:
                    with open(os.path.join(md, sub, name), "rb") as f:
                        cache[key] = sha(f.read())
                except FileNotFoundError:
                    continue
            if cache[key] == h:
                return sub, name
        return None

    def deliver(self, node, size=None, folder=None):
        user = self.rnd.choice(USERS)
        folder = folder or (self.rnd.choice(self.folders[user]) if self.rnd.random() < 0.4 else "INBOX")
        if size is None:
            r = self.rnd.random()
            size = (self.rnd.randrange(500, 8000) if r < 0.7 else
                    self.rnd.randrange(20000, 40000) if r < 0.85 else
                    self.rnd.randrange(41000, 600000))
        i = self.n
        self.n += 1
        b = self.body(i, size)
        h = sha(b)
        node.deliver(user, b, folder)
        self.msgs[h] = dict(user=user, folder=folder, live=True, flags={}, i=i)
        self.log("deliver", node=node.i, user=user, folder=folder, i=i, size=size, sha=h)
        return h

    def pick_file(self, node):
        """A live message of the model with its file on node: (h, sub, name), or None."""
        live = [h for h, m in self.msgs.items() if m["live"]]
        self.rnd.shuffle(live)
        for h in live[:12]:
            m = self.msgs[h]
            f = self.find(node, m["user"], m["folder"], h)
            if f:
                return h, f[0], f[1]
        return None

    def set_flags(self, node, with_keyword=False):
        p = self.pick_file(node)
        if not p:
            return None
        h, sub, name = p
        m = self.msgs[h]
        user, folder = m["user"], m["folder"]
        old = name.split(":2,")[1] if ":2," in name else ""
        kwmap = node.keywords(user, folder)
        letters = set(old)
        for c in SYS:
            if self.rnd.random() < 0.3:
                letters ^= {c}
        if with_keyword:
            kw = self.rnd.choice(KEYWORDS)
            self.clear_dead_lock(node, user, folder)
            letter = node.add_keyword(user, folder, kw)
            kwmap[letter] = kw
            letters ^= {letter}
        elif self.rnd.random() < 0.3:
            letters -= set("abcdefghijklmnopqrstuvwxyz")
        if letters == set(old):
            letters ^= {"S"}
        try:
            new = node.set_flags(user, folder, sub, name, "".join(letters))
        except FileNotFoundError:
            self.log("flags-raced", node=node.i, sha=h, name=name)  # the daemon renamed it meanwhile
            return None
        now = time.time()
        # the change is the diff against what this node showed, as the daemon's scan sees it
        changed = {}
        for c in set(old) ^ letters:
            if c in SYS:
                changed[c] = c in letters
            elif "a" <= c <= "z" and c in kwmap:
                changed["kw:" + kwmap[c]] = c in letters
        for k, v in changed.items():
            m["flags"].setdefault(k, []).append((now, node.i, v))
        self.log("flags", node=node.i, sha=h, old=name, new=new, changed=changed)
        return node

    def clear_dead_lock(self, node, user, folder):
        """A dovecot-uidlist.lock a killed daemon left ("PID:HOSTNAME" of a process that
        is gone) is stale at once for Dovecot (and for mailmesh): removed as Dovecot's
        dotlock code does (mmtest's add_keyword, standing for Dovecot, only waits)."""
        lock = os.path.join(node.maildir(user, folder), "dovecot-uidlist.lock")
        try:
            with open(lock) as f:
                pid = int(f.read().split(":")[0])
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass
            self.log("dead-lock-removed", node=node.i, user=user, folder=folder, pid=pid,
                     running=node.proc is not None)
        except OSError:
            pass

    def expunge(self, node):
        p = self.pick_file(node)
        if not p:
            return
        h, sub, name = p
        m = self.msgs[h]
        try:
            node.expunge(m["user"], m["folder"], sub, name)
        except FileNotFoundError:
            self.log("expunge-raced", node=node.i, sha=h, name=name)
            return
        m["live"] = False
        self.log("expunge", node=node.i, sha=h, name=name)

    def create_folder(self, node):
        user = self.rnd.choice(USERS)
        folder = "F%d" % self.rnd.randrange(6)
        node.ensure_folder(user, folder)
        if folder not in self.folders[user]:
            self.folders[user].append(folder)
        self.log("folder", node=node.i, user=user, folder=folder)

    # ---- one iteration ----

    def workload(self, it):
        end = time.time() + self.secs
        rnd = self.rnd
        self.log("iteration", it=it)
        while time.time() < end:
            self.restarts_due()
            node = rnd.choice(self.cl.nodes)
            r = rnd.random()
            if r < 0.35:
                self.deliver(node)
            elif r < 0.40:
                # a burst, with a kill in its middle half the time
                n = rnd.randrange(5, 30)
                victim = rnd.choice(self.cl.nodes) if rnd.random() < 0.5 else None
                at = rnd.randrange(n)
                self.log("burst", node=node.i, n=n, kill=victim and victim.i, at=at)
                for k in range(n):
                    if victim and k == at:
                        self.kill(victim, "mid-burst")
                    self.deliver(node)
            elif r < 0.44:
                # a large body, and a kill of a receiver while it is in flight
                src = rnd.choice(self.running() or self.cl.nodes)
                self.deliver(src, size=rnd.randrange(1000000, 3000000))
                others = [n for n in self.running() if n is not src]
                if others:
                    time.sleep(rnd.random() * 0.6)
                    self.kill(rnd.choice(others), "large-transfer")
            elif r < 0.70:
                if self.set_flags(node) and rnd.random() < 0.15:
                    time.sleep(rnd.random() * 0.03)
                    self.kill(node, "after-flags")
            elif r < 0.77:
                if self.set_flags(node, with_keyword=True) and rnd.random() < 0.15:
                    time.sleep(rnd.random() * 0.03)
                    self.kill(node, "after-keyword")
            elif r < 0.88:
                self.expunge(node)
            elif r < 0.91:
                self.create_folder(node)
            elif r < 0.96:
                if len(self.running()) > 1:
                    self.kill(rnd.choice(self.running()), "random")
            time.sleep(rnd.random() * 0.08)

    # ---- the checks ----

    def expected_flags(self, m):
        """({flag or "kw:name": value}, {those that may end either way})."""
        out, loose = {}, set()
        for k, ops in m["flags"].items():
            out[k] = ops[-1][2]
            for j, (t1, n1, v1) in enumerate(ops[:-1]):
                for t2, n2, v2 in ops[j + 1:]:
                    if n1 == n2 or v1 == v2:
                        continue
                    close = t2 - t1 < AMBIG_S
                    # n1 killed before it could have scanned, back only after t2
                    late = any(kn == n1 and t1 <= kt < t1 + SCAN_S and (ks is None or ks > t2 - AMBIG_S)
                               for kn, kt, ks in self.kills)
                    if close or late:
                        loose.add(k)
        return out, loose

    def check(self, it):
        t = self.t
        label = "seed %d iteration %d" % (self.seed, it)
        self.restarts_due(force=True)
        self.log("settle")
        ok = self.cl.wait_settled(timeout=180, uid_authority=True)
        self.log("settled", ok=ok)
        if not t.check(ok, "%s: all nodes converge (same roots, same Maildirs, no missing body)" % label):
            self.cl.explain()
            return False
        good = True
        loose_total = 0
        for node in self.cl.nodes:
            content = node.content()
            seen = {}
            for (user, folder), msgs in content.items():
                for h, flags, kws, _mt in msgs:
                    seen.setdefault(h, []).append((user, folder, flags, kws))
            lost = [h for h, m in self.msgs.items() if m["live"] and h not in seen]
            back = [h for h, m in self.msgs.items() if not m["live"] and h in seen]
            unknown = [h for h in seen if h not in self.msgs]
            dups = [h for h, v in seen.items() if len(v) > 1]
            misplaced, wrong = [], []
            for h, v in seen.items():
                m = self.msgs.get(h)
                if not m or not m["live"] or len(v) != 1:
                    continue
                user, folder, flags, kws = v[0]
                if (user, folder) != (m["user"], m["folder"]):
                    misplaced.append(h)
                    continue
                exp, loose = self.expected_flags(m)
                if node.i == 1:
                    loose_total += len(loose)
                for k, val in exp.items():
                    have = (k[3:] in kws) if k.startswith("kw:") else (k in flags)
                    if have != val and k not in loose:
                        wrong.append((h, k, val, flags, kws))
            for what, lst in (("lost", lost), ("back after an expunge", back), ("unknown", unknown),
                              ("duplicated", dups), ("misplaced", misplaced), ("with a wrong flag", wrong)):
                good &= t.check(not lst, "%s: node%d: no message %s (%d: %s)" % (label, node.i, what, len(lst), lst[:4]))
        self.ambiguous = loose_total
        # tmp/ empties (bodies staged or taken back are placed within moments)
        deadline = time.time() + 10 * mmtest.SLOW
        while True:
            left = []
            for node in self.cl.nodes:
                for dirpath, _, files in os.walk(node.mail):
                    if os.path.basename(dirpath) == "tmp":
                        left += [os.path.join(dirpath, f) for f in files]
            if not left or time.time() > deadline:
                break
            time.sleep(0.25)
        good &= t.check(not left, "%s: nothing left in tmp/ (%s)" % (label, left[:3]))
        good &= self.check_uids(label)
        return good

    def check_uids(self, label):
        t = self.t
        deadline = time.time() + 60 * mmtest.SLOW
        while True:
            maps = [n.uid_maps() for n in self.cl.nodes]
            same = all(mp == maps[0] for mp in maps[1:])
            listed = all(v and all(uid for uid, _ in v[1]) for mp in maps for v in mp.values())
            uniq = all(len(set(u for u, _ in v[1])) == len(v[1]) for mp in maps for v in mp.values() if v)
            if (same and listed and uniq) or time.time() > deadline:
                break
            time.sleep(0.25)
        ok = t.check(same, "%s: same UIDVALIDITY and UID -> message map on every node" % label)
        if not same:
            for k in sorted(maps[0]):
                vals = [mp.get(k) for mp in maps]
                if any(v != vals[0] for v in vals):
                    print("  %s: %s" % (k, vals))
        ok &= t.check(listed, "%s: dovecot-uidlist lists every message" % label)
        ok &= t.check(uniq, "%s: no UID listed twice in a folder" % label)
        reused = []
        for mp in maps:
            for (user, folder), v in mp.items():
                if not v:
                    continue
                uv, entries = v
                for uid, h in entries:
                    key = (user, folder, uv, uid)
                    if uid and self.uid_seen.setdefault(key, h) != h:
                        reused.append((key, self.uid_seen[key], h))
        ok &= t.check(not reused, "%s: no UID given to another message under one UIDVALIDITY (%s)" %
                      (label, reused[:3]))
        return ok

    def close(self, failed):
        self.oplog.close()
        keep = os.environ.get("MM_TORTURE_KEEP")
        if failed and not keep:
            with open(os.path.join(self.cl.dir, "ops.log")) as f:
                ops = f.readlines()
            print("last operations of seed %d (MM_TORTURE_KEEP=DIR keeps the whole op log and the node logs):" %
                  self.seed)
            sys.stdout.writelines("  " + line for line in ops[-40:])
        if failed and keep:
            dest = keep
            os.makedirs(dest, exist_ok=True)
            shutil.copy(os.path.join(self.cl.dir, "ops.log"), os.path.join(dest, "seed%d-ops.log" % self.seed))
            for n in self.cl.nodes:
                shutil.copy(n.log, os.path.join(dest, "seed%d-node%d.log" % (self.seed, n.i)))
            print("op log and node logs of seed %d kept in %s" % (self.seed, dest), flush=True)
        self.cl.close(keep_on_failure=failed and os.environ.get("KEEP") == "1")


def run_seed(t, seed, iters, secs):
    tt = Torture(t, seed, secs)
    failed_before = t.failed
    try:
        tt.cl.start()
        for it in range(iters):
            tt.workload(it)
            good = tt.check(it)
            live = sum(1 for m in tt.msgs.values() if m["live"])
            print("info: seed %d iteration %d: %d messages made, %d live, %d kills, ops %s, %d ambiguous flags%s" %
                  (seed, it, tt.n, live, len(tt.kills), json.dumps(tt.counts, sort_keys=True), tt.ambiguous,
                   "" if good else " FAILED"), flush=True)
            if not good:
                break
        codes = [n.stop() for n in tt.cl.nodes]
        t.check(codes == [0] * 3, "seed %d: every daemon stops cleanly on SIGTERM (%s)" % (seed, codes))
    finally:
        tt.close(t.failed > failed_before)


def main():
    t = mmtest.Report("it_daemon_torture")
    mmtest.exit_on_sigterm()
    s = os.environ.get("MM_TORTURE_SEED", "1")
    seed = random.randrange(1 << 31) if s == "random" else int(s)
    seeds = int(os.environ.get("MM_TORTURE_SEEDS", "1"))
    # (one iteration under SANITIZE: the plain run of CI does two, and the whole CI
    # run is to stay near 20 minutes)
    iters = int(os.environ.get("MM_TORTURE_ITERS", "1" if mmtest.SANITIZE else "2"))
    secs = float(os.environ.get("MM_TORTURE_SECS", "6"))
    for k in range(seeds):
        print("seed %d: %d iterations of %g s" % (seed + k, iters, secs), flush=True)
        t.run(run_seed, seed + k, iters, secs)
    t.finish()


if __name__ == "__main__":
    main()
