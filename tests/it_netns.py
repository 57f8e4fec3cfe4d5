"""it_netns.py — multi-host convergence: three daemons, each in its own network namespace
with its own address (10.77.0.11-13, port 22120; the namespaces are joined by a bridge in
a fourth, hub namespace; veth pairs are created inside the namespaces, so no interface or
packet ever touches the host's network).  Needs root.

1. Mail delivered on every node converges.
2. node3's link is cut (ip link set down).  Mail keeps changing on both sides: deliveries,
   flag changes and expunges on node1/node2 and on node3, and the same message gets
   \\Seen on node1 and \\Flagged on node3.  While cut, node3's new mail is not on node1.
3. The link is restored: all converge (same Maildir content and roots), with every
   delivered and not expunged message present once, no expunged one back, and both
   concurrent flags kept.
The namespaces (and with them their veth and bridge interfaces) are deleted at the end,
also on failure or SIGTERM.  Prints `N passed, N failed`."""
import hashlib
import os
import random
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

PORT = 22120
TAG = "mmit%d" % (os.getpid() % 100000)
HUB = TAG + "-hub"
USERS = ["example.org/alice", "example.net/bob"]


def sha(b):
    return hashlib.sha256(b).hexdigest()[:16]


def ns(i):
    return "%s-n%d" % (TAG, i)


def addr(i):
    return "10.77.0.%d" % (10 + i)


def ip(*args):
    r = subprocess.run(["ip"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(args), r.stderr.strip()))
    return r.stdout


def make_net(n, made):
    ip("netns", "add", HUB)
    made.append(HUB)
    ip("-n", HUB, "link", "add", "br0", "type", "bridge")
    ip("-n", HUB, "link", "set", "br0", "up")
    for i in range(1, n + 1):
        ip("netns", "add", ns(i))
        made.append(ns(i))
        ip("-n", ns(i), "link", "set", "lo", "up")
        # Both ends are created inside namespaces: eth0 in the node's, vethI in the hub.
        ip("-n", ns(i), "link", "add", "eth0", "type", "veth", "peer", "name", "veth%d" % i, "netns", HUB)
        ip("-n", ns(i), "addr", "add", addr(i) + "/24", "dev", "eth0")
        ip("-n", ns(i), "link", "set", "eth0", "up")
        ip("-n", HUB, "link", "set", "veth%d" % i, "master", "br0")
        ip("-n", HUB, "link", "set", "veth%d" % i, "up")


def delete_net(made):
    for name in reversed(made):
        # Nothing of ours may survive in it: the daemons were killed by Cluster.close.
        pids = subprocess.run(["ip", "netns", "pids", name], stdout=subprocess.PIPE, text=True).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)


def rewrite_addresses(cl):
    peers = os.path.join(cl.dir, "peers")
    with open(peers) as f:
        lines = f.readlines()
    out = []
    for line in lines:
        parts = line.split()
        if parts and not line.startswith("#"):
            i = int(parts[0][len("node"):])
            line = "%s %s:%d %s\n" % (parts[0], addr(i), PORT, parts[2])
        out.append(line)
    with open(peers, "w") as f:
        f.writelines(out)
    for node in cl.nodes:
        cl.set_conf(node, "listen", "%s:%d" % (addr(node.i), PORT))
        node.prefix = ["ip", "netns", "exec", ns(node.i)]


class Work:
    """Random mail changes on a set of nodes, remembering what must end where."""

    def __init__(self, rnd):
        self.rnd = rnd
        self.delivered = {}
        self.expunged = set()
        self.n = 0

    def deliver(self, node):
        self.n += 1
        body = mmtest.message(self.n + 100000 * node.i, rnd=self.rnd)
        node.deliver(self.rnd.choice(USERS), body, mtime=1700000000 + self.rnd.randrange(10 ** 7))
        self.delivered[sha(body)] = node.i
        return sha(body)

    def step(self, node):
        r = self.rnd.random()
        user = self.rnd.choice(USERS)
        files = node.files(user)
        if r < 0.5 or not files:
            self.deliver(node)
            return
        sub, name = self.rnd.choice(files)
        path = os.path.join(node.maildir(user), sub, name)
        try:
            if r < 0.8:
                node.set_flags(user, "INBOX", sub, name, "".join(c for c in "FRST" if self.rnd.random() < 0.4))
            else:
                with open(path, "rb") as f:
                    h = sha(f.read())
                node.expunge(user, "INBOX", sub, name)
                self.expunged.add(h)
        except FileNotFoundError:
            pass  # renamed by the daemon meanwhile (a remote flag change)


def find(node, user, h):
    for sub, name in node.files(user):
        try:
            with open(os.path.join(node.maildir(user), sub, name), "rb") as f:
                if sha(f.read()) == h:
                    return sub, name
        except FileNotFoundError:
            pass
    return None


def netns_test(t, seed):
    rnd = random.Random(seed)
    made = []
    cl = mmtest.Cluster(3, PORT, name="netns")
    failed_before = t.failed
    try:
        make_net(3, made)
        rewrite_addresses(cl)
        for node in cl.nodes:
            r = mmtest.run([mmtest.MAILMESH, "check-config", "-c", node.conf])
            t.check(r.returncode == 0, "node%d's config with address %s is valid (%s)" % (node.i, addr(node.i), r.stderr.strip()))
        n1, n2, n3 = cl.nodes
        w = Work(rnd)
        for node in cl.nodes:
            for _ in range(10):
                w.deliver(node)
        cl.start()
        if not t.check(cl.wait_converged(timeout=60), "three nodes in three namespaces converge"):
            cl.explain()
            return
        # The message both sides will flag while apart (a user the random work leaves alone).
        user = "example.com/dave"
        body = mmtest.message(424242, rnd=rnd)
        n1.deliver(user, body)
        shared = sha(body)
        w.delivered[shared] = 1
        if not t.check(cl.wait_converged(timeout=60), "a new message reaches every namespace"):
            return

        ip("-n", ns(3), "link", "set", "eth0", "down")
        for i in range(60):
            w.step(n1 if i % 2 else n2)
            w.step(n3)
            if i % 10 == 0:
                time.sleep(0.05)
        f1, f3 = find(n1, user, shared), find(n3, user, shared)
        t.check(f1 and f3, "the shared message is on node1 and node3")
        n1.set_flags(user, "INBOX", f1[0], f1[1], "S")
        n3.set_flags(user, "INBOX", f3[0], f3[1], "F")
        only3 = w.deliver(n3)
        time.sleep(1.0 * mmtest.SLOW)  # any leak through the cut would have arrived by now
        on1 = any(m[0] == only3 for v in n1.content().values() for m in v)
        t.check(not on1, "while node3's link is down its new mail does not reach node1")
        st = n3.status() or {}
        t.check(st and not cl.converged(), "the cluster differs while node3 is cut off")

        ip("-n", ns(3), "link", "set", "eth0", "up")
        ok = cl.wait_converged(timeout=120)
        if not t.check(ok, "after the link is restored all three converge"):
            cl.explain()
            return
        content = n1.content()
        present, dups = set(), 0
        for msgs in content.values():
            hs = [m[0] for m in msgs]
            dups += len(hs) - len(set(hs))
            present.update(hs)
        lost = [h for h in w.delivered if h not in present and h not in w.expunged]
        t.check(not lost, "every delivered, unexpunged message is present (%d lost)" % len(lost))
        t.check(not (present & w.expunged), "no expunged message is back")
        t.check(dups == 0, "no message is duplicated (%d)" % dups)
        flags = [m[1] for m in content[(user, "INBOX")] if m[0] == shared]
        t.check(flags == ["FS"],
                "\\Seen from node1 and \\Flagged from node3, set while apart, are both kept (%s)" % flags)
        roots = cl.agreed_roots()
        t.check(len(set(roots)) == 1 and roots[0], "identical roots")
        codes = [node.stop() for node in cl.nodes]
        t.check(codes == [0] * 3, "every daemon stops cleanly on SIGTERM (%s)" % codes)
    finally:
        cl.close(keep_on_failure=t.failed > failed_before and os.environ.get("KEEP") == "1")
        delete_net(made)
        left = [n for n in subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True).stdout.split()
                if n.startswith(TAG)]
        t.check(not left, "every namespace the test made is gone (%s)" % left)


def main():
    t = mmtest.Report("it_netns")
    # SIGTERM (e.g. a timeout) must still run the finally blocks that delete namespaces.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if os.geteuid() != 0:
        t.check(False, "this test must run as root (it creates network namespaces)")
        t.finish()
    seed = int(os.environ.get("MM_SEED", random.randrange(1 << 31)))
    print("seed %d" % seed, flush=True)
    t.run(netns_test, seed)
    t.finish()


if __name__ == "__main__":
    main()
