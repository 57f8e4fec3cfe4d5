"""it_daemon_diskfull.py — a node whose disk fills up while it pulls mail keeps running,
says what is wrong, keeps nothing half-written, and completes by itself once there is
space again.  Real daemons on loopback, ports 22140-22149.  Needs root: the joining
node's Maildirs (first run) or its state directory (second run) are on a small tmpfs
that this test mounts, and unmounts at the end (also when it fails).

Node 1 holds 120 messages (about 6 MB).  Node 2 starts empty with its Maildirs on a
3 MB tmpfs (about half of them would fit); or node 1 holds 1,000 small ones and node 2's
state database is on a 160 KB tmpfs.
While it is full:
  - node 2 keeps running and answering status, and its log names the failure (the
    errno's text, "No space left on device");
  - it does not spin: it uses less than half a core meanwhile (a retry loop without
    a pause would use a whole one);
  - every message file it shows has the bytes of one of node 1's messages, once: no
    file cut short by the full disk is ever in new/ or cur/.  (A joining node places
    bodies in UID order, so while an early one cannot be written the later ones wait
    in tmp/: how many show while full is printed, not asserted.)
  - node 1 is untouched (the same content as before);
  - with its state full, its status shows fetching paused, and why; restarted then,
    it starts and keeps running (it does not exit for want of space).
Then the tmpfs grows (remount, size=64m), without touching either daemon: node 2 must
end with exactly node 1's content (every body once, flags, mtimes), the same root, no
temporary file left in tmp/, and a message delivered on node 2 afterwards reaches node 1.
Prints `N passed, N failed`."""
import hashlib
import os
import random
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

USER = "example.org/alice"
N_MSGS = 120   # of 30-70 KB, for the Maildirs' tmpfs
N_SMALL = 1000  # of 1-3 KB, for the state's: their records fill it
TMPFS_MB = 3


def cpu_seconds(pid):
    """User + system CPU seconds of a process (from /proc), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def bodies(node):
    """sha256 of every message file in node's Maildirs (new/ and cur/)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(node.mail):
        if os.path.basename(dirpath) in ("new", "cur"):
            for f in filenames:
                with open(os.path.join(dirpath, f), "rb") as fh:
                    out.append(hashlib.sha256(fh.read()).hexdigest())
            dirnames[:] = []
    return out


def tmp_files(node):
    n = 0
    for dirpath, dirnames, filenames in os.walk(node.mail):
        if os.path.basename(dirpath) == "tmp":
            n += len(filenames)
    return n


def diskfull_test(t, seed, where, port):
    rnd = random.Random(seed)
    cl = mmtest.Cluster(2, port, name="diskfull")
    mounted = None
    print("---- node 2's %s on a small tmpfs" % where, flush=True)
    try:
        src, dst = cl.nodes
        n_msgs = N_MSGS if where == "Maildirs" else N_SMALL
        for i in range(n_msgs):
            body = mmtest.message(i, size=rnd.randrange(30000, 70000) if where == "Maildirs"
                                  else rnd.randrange(1000, 3000), rnd=rnd)
            name = src.deliver(USER, body, mtime=1600000000 + i)
            if i % 7 == 0:
                src.set_flags(USER, "INBOX", "new", name, "S")
        if where == "Maildirs":
            mnt, size = dst.mail, "%dm" % TMPFS_MB
            os.makedirs(mnt, exist_ok=True)
        else:
            mnt, size = os.path.join(dst.dir, "state-small"), "160k"
            os.makedirs(mnt)
        mounted = mnt   # before the mount: a SIGTERM right after it must still unmount
        r = mmtest.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "mm-diskfull", mnt])
        if not t.check(r.returncode == 0, "a %s tmpfs for node 2's %s is mounted (%s)" %
                       (size, where, r.stderr.strip() or "ok")):
            return
        if where == "state":
            old_state = os.path.join(dst.dir, "state")
            for f in os.listdir(old_state):
                shutil.copy2(os.path.join(old_state, f), mnt)
            cl.set_conf(dst, "state_dir", mnt)
        src.start()
        ok = cl.wait_converged(timeout=60, nodes=[src])
        before = src.content()
        want = sorted(bodies(src))
        t.check(ok and len(want) == n_msgs, "node 1 holds %d messages (%.1f MB)" %
                (len(want), sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(src.mail)
                                for f in fs) / 1e6))
        dst.start()

        # full: node 2 has stopped gaining messages, and says why
        deadline = time.time() + 60 * mmtest.SLOW
        last, since = -1, time.time()
        while time.time() < deadline:
            n = dst.message_count()
            if n != last:
                last, since = n, time.time()
            elif time.time() - since > 3 and "No space left on device" in dst.log_text():
                break
            time.sleep(0.2)
        full_count = dst.message_count()
        if where == "Maildirs":
            t.check(full_count < n_msgs, "node 2 fills its tmpfs: %d of %d messages show" % (full_count, n_msgs))
        else:
            print("node 2 shows %d of %d messages while its state cannot grow" % (full_count, n_msgs))
        log = dst.log_text()
        line = next((l for l in log.splitlines() if "No space left on device" in l), "")
        t.check(line != "", "node 2's log names the failure: %s" % (line.strip()[:200] or "(nothing)"))

        pid = dst.pid()
        c0 = cpu_seconds(pid) if pid else None
        time.sleep(5)
        c1 = cpu_seconds(pid) if dst.pid() else None
        used = (c1 - c0) if c0 is not None and c1 is not None else None
        t.check(dst.pid() is not None and dst.status(quiet=True) is not None,
                "node 2 keeps running and answering while its disk is full")
        t.check(used is not None and used < 2.5 * mmtest.SLOW,
                "node 2 does not spin while full: %s s of CPU in 5 s" % (used if used is None else "%.2f" % used))
        have = bodies(dst)
        t.check(set(have) <= set(want) and len(set(have)) == len(have),
                "every file node 2 shows is one of node 1's messages, whole and once (%d files)" % len(have))
        t.check(src.content() == before and src.status(quiet=True) is not None, "node 1 is untouched")
        if where == "state":
            # the pause shows in status (the time left of it, and why)
            deadline = time.time() + 10 * mmtest.SLOW
            st = {}
            while time.time() < deadline:
                st = dst.status(quiet=True) or {}
                if st.get("fetch_paused_ms", 0) > 0:
                    break
                time.sleep(0.1)
            t.check(st.get("fetch_paused_ms", 0) > 0 and "No space left on device" in st.get("store_error", ""),
                    "node 2's status shows fetching paused (%s ms more: %r)" %
                    (st.get("fetch_paused_ms"), st.get("store_error")))
            # restarted while its state is full (a reboot, an admin's restart), it
            # starts and waits for space as a running node does (it used to exit)
            dst.stop()
            try:
                dst.start()
                started = ""
            except RuntimeError as e:
                started = str(e)[-300:]
            time.sleep(1)
            t.check(not started and dst.pid() is not None and dst.status(quiet=True) is not None,
                    "node 2 restarted while its state disk is full keeps running%s" %
                    (": " + started if started else ""))

        # space again: node 2 completes by itself
        r = mmtest.run(["mount", "-o", "remount,size=64m", mounted])
        t.check(r.returncode == 0, "the tmpfs grows to 64 MB (%s)" % (r.stderr.strip() or "ok"))
        t0 = time.time()
        ok = cl.wait_converged(timeout=120)
        if not t.check(ok, "node 2 completes once there is space, without a restart (%.1f s)" % (time.time() - t0)):
            cl.explain()
        have = sorted(bodies(dst))
        t.check(have == want, "node 2 holds each of node 1's %d messages exactly once (%d files)" % (n_msgs, len(have)))
        t.check(dst.content() == src.content(), "node 2's Maildir equals node 1's (bodies, flags, mtimes)")
        st = dst.status(quiet=True) or {}
        t.check(st.get("fetch_paused_ms") == 0 and st.get("store_error") == "",
                "node 2's status shows no pause once done (%s, %r)" % (st.get("fetch_paused_ms"), st.get("store_error")))
        roots = cl.agreed_roots()
        t.check(len(set(roots)) == 1 and roots[0], "both roots are identical")
        deadline = time.time() + 10 * mmtest.SLOW
        while tmp_files(dst) and time.time() < deadline:
            time.sleep(0.2)
        t.check(tmp_files(dst) == 0, "no temporary file is left in node 2's tmp/ (%d)" % tmp_files(dst))
        dst.deliver(USER, mmtest.message(10 ** 6, size=2000, rnd=rnd), mtime=1700000000)
        ok = cl.wait_converged(timeout=30)
        t.check(ok and src.message_count() == n_msgs + 1, "a delivery on node 2 afterwards reaches node 1")
    finally:
        failed = t.failed > 0
        for node in cl.nodes:
            node.stop(mmtest.signal.SIGKILL)
        if mounted and os.path.ismount(mounted):
            # (MM_KEEP=1 keeps the directories, not what was on the tmpfs)
            r = mmtest.run(["umount", mounted])
            if r.returncode != 0:
                subprocess.run(["umount", "-l", mounted])
        cl.close(keep_on_failure=failed and os.environ.get("MM_KEEP") == "1")


def main():
    mmtest.exit_on_sigterm()
    t = mmtest.Report("it_daemon_diskfull")
    if os.geteuid() != 0:
        print("it_daemon_diskfull: needs root (it mounts a tmpfs)", file=sys.stderr)
        t.check(False, "running as root")
        t.finish()
    seed = int(os.environ.get("MM_SEED", "1"))
    only = os.environ.get("MM_DISKFULL_ONLY")  # "Maildirs" or "state": one run (by hand)
    if only in (None, "Maildirs"):
        t.run(diskfull_test, seed, "Maildirs", 22140)
    if only in (None, "state"):
        t.run(diskfull_test, seed, "state", 22145)
    t.finish()


if __name__ == "__main__":
    main()
