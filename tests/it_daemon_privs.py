"""it_daemon_privs.py — least privilege.  Two real daemons on loopback, ports 22080-22089.

The test (as root) makes a system user and group of its own (useradd; removed again at
the end, also on failure).  node2's config says `user = <that user>` and its Maildirs
belong to that user (mode 0750 directories).  node2 is started as root; node1 runs as
root without `user` and receives the local changes.  Checks:
- node2's process runs with that uid and gid only (all of real, effective, saved; no
  supplementary groups);
- every file node2 writes into the Maildir (messages pulled from node1, flag renames,
  dovecot-keywords, a new folder, a new user's Maildir) has the Maildir's owner and
  group; files mode 0640 and new directories 0750 (the Maildir's mode);
- the control socket is a socket of mode 0600 owned by that user; `mailmesh status` works
  for that user and root, and fails for another unprivileged user (nobody) even though
  the state directory is searchable by all;
- a change made in node2's Maildir by the mail user reaches node1;
- a reload (SIGHUP) of a peers file only root may read is refused with the reason;
  made readable again, it is taken;
- a control client that connects and sends nothing does not hold up the daemon's stop;
- a `state_dir` holding other files than mailmesh's is refused, not given to the user.
Prints `N passed, N failed`."""
import os
import pwd
import random
import signal
import socket
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

BASE = 22080
ALICE, BOB = "example.org/alice", "example.net/bob"


def proc_ids(pid):
    uids = gids = groups = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Uid:"):
                uids = [int(x) for x in line.split()[1:]]
            elif line.startswith("Gid:"):
                gids = [int(x) for x in line.split()[1:]]
            elif line.startswith("Groups:"):
                groups = [int(x) for x in line.split()[1:]]
    return uids, gids, groups


def status_as(uid, gid, conf):
    return subprocess.run(["setpriv", "--reuid=%d" % uid, "--regid=%d" % gid, "--clear-groups",
                           mmtest.MAILMESH, "status", "-c", conf],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)


def tree(path):
    """[(path, lstat)] of every entry below path (path included)."""
    out = [(path, os.lstat(path))]
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out.append((p, os.lstat(p)))
    return out


def privs_test(t, uid, gid, user):
    cl = mmtest.Cluster(2, BASE, name="privs")
    n1, n2 = cl.nodes
    failed_before = t.failed
    try:
        cl.set_conf(n2, "user", user)
        # Let the unprivileged daemon reach its files: the temp dirs are root's 0700.
        for d in (cl.dir, n2.dir):
            os.chmod(d, 0o755)
        os.chmod(os.path.join(n2.dir, "state"), 0o755)  # only the socket's own mode protects it
        md = n2.ensure_folder(ALICE)
        for p in (n2.mail, os.path.dirname(os.path.dirname(md)), os.path.dirname(md), md,
                  os.path.join(md, "cur"), os.path.join(md, "new"), os.path.join(md, "tmp")):
            os.chown(p, uid, gid)
            os.chmod(p, 0o750)
        os.chmod(n2.mail, 0o755)
        # node1 holds mail for two users, a second folder and a keyword.
        rnd = random.Random(4)
        for i in range(30):
            n1.deliver(ALICE, mmtest.message(i, rnd=rnd), folder="INBOX" if i % 3 else "Archive")
        for i in range(5):
            n1.deliver(BOB, mmtest.message(100 + i, rnd=rnd))
        sub, name = n1.files(ALICE)[0]
        n1.set_flags(ALICE, "INBOX", sub, name, "S" + n1.add_keyword(ALICE, "INBOX", "work"))
        cl.start()
        ok = cl.wait_converged(timeout=60)
        if not t.check(ok, "node2 (running as %s) converges with node1" % user):
            cl.explain()
            return
        pid = n2.pid()
        uids, gids, groups = proc_ids(pid)
        t.check(uids == [uid] * 4 and gids == [gid] * 4 and groups == [],
                "node2 runs as %s only: Uid %s Gid %s Groups %s" % (user, uids, gids, groups))
        # A flag change on node1 is renamed in node2's Maildir: owner kept.
        sub, name = n1.files(ALICE)[1]
        n1.set_flags(ALICE, "INBOX", sub, name, "F")
        t.check(cl.wait_converged(timeout=60), "a flag change reaches node2")

        bad_owner, bad_mode, n_files, n_dirs = [], [], 0, 0
        for root in (n2.maildir(ALICE), n2.maildir(BOB)):
            for p, st in tree(root):
                if st.st_uid != uid or st.st_gid != gid:
                    bad_owner.append((p, st.st_uid, st.st_gid))
                if stat.S_ISDIR(st.st_mode):
                    n_dirs += 1
                    if stat.S_IMODE(st.st_mode) != 0o750 and root == n2.maildir(ALICE):
                        bad_mode.append((p, oct(stat.S_IMODE(st.st_mode))))
                elif stat.S_ISREG(st.st_mode):
                    n_files += 1
                    if stat.S_IMODE(st.st_mode) & 0o027 or (root == n2.maildir(ALICE) and
                                                             stat.S_IMODE(st.st_mode) != 0o640):
                        bad_mode.append((p, oct(stat.S_IMODE(st.st_mode))))
        t.check(n_files >= 36 and n_dirs >= 8, "node2 wrote %d files and %d directories into the Maildirs" % (n_files, n_dirs))
        t.check(not bad_owner, "every file and directory in node2's Maildirs belongs to %s (%s)" % (user, bad_owner[:5]))
        t.check(not bad_mode, "files are 0640 and new folders 0750 as the Maildir (%s)" % bad_mode[:5])
        kw = os.path.join(n2.maildir(ALICE), "dovecot-keywords")
        t.check(os.path.exists(kw) and os.stat(kw).st_uid == uid, "dovecot-keywords written by node2 belongs to %s" % user)
        arch = n2.maildir(ALICE, "Archive")
        t.check(os.path.isdir(arch) and os.stat(arch).st_uid == uid, "the new folder .Archive belongs to %s" % user)

        sock = os.path.join(n2.dir, "state", "control.sock")
        st = os.lstat(sock)
        t.check(stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == uid,
                "control socket is a socket, mode %s, owner uid %d" % (oct(stat.S_IMODE(st.st_mode)), st.st_uid))
        r = status_as(uid, gid, n2.conf)
        t.check(r.returncode == 0 and "node1" in r.stdout, "`mailmesh status` works as %s (exit %d %s)" % (user, r.returncode, r.stderr.strip()))
        r = mmtest.run([mmtest.MAILMESH, "status", "-c", n2.conf], timeout=30)
        t.check(r.returncode == 0, "`mailmesh status` works as root")
        nobody = pwd.getpwnam("nobody")
        r = status_as(nobody.pw_uid, nobody.pw_gid, n2.conf)
        t.check(r.returncode != 0 and r.stdout == "" and r.stderr.strip() != "",
                "`mailmesh status` as nobody fails with an error (exit %d: %s)" % (r.returncode, r.stderr.strip()[:200]))
        # The mail user itself (as Dovecot would) delivers on node2: it reaches node1.
        body = mmtest.message(5000, rnd=rnd)
        tmp = os.path.join(n2.maildir(ALICE), "tmp", "1700000000.M1P1.node2")
        with open(tmp, "wb") as f:
            f.write(body)
        os.chown(tmp, uid, gid)
        os.chmod(tmp, 0o640)
        os.rename(tmp, os.path.join(n2.maildir(ALICE), "new", "1700000000.M1P1.node2"))
        t.check(cl.wait_converged(timeout=60), "a delivery in node2's Maildir reaches node1")
        # A reload reads the peers file as the mail user (docs/operations.md): one that
        # only root may read is refused, with the reason, and the peers are kept.
        peers = os.path.join(cl.dir, "peers")
        os.chmod(peers, 0o600)
        n2.proc.send_signal(signal.SIGHUP)
        err = ""
        for _ in range(100 * mmtest.SLOW):
            err = (n2.status(quiet=True) or {}).get("peers_reload_error", "")
            if err:
                break
            time.sleep(0.05)
        t.check(peers in err and "Permission denied" in err,
                "a reload of a peers file only root may read is refused with the reason (%r)" % err)
        os.chmod(peers, 0o644)
        n2.proc.send_signal(signal.SIGHUP)
        st = {}
        for _ in range(100 * mmtest.SLOW):
            st = n2.status(quiet=True) or {}
            if st.get("peers_reloads") == 1:
                break
            time.sleep(0.05)
        t.check(st.get("peers_reloads") == 1 and st.get("peers_reload_error") == "" and
                [p["name"] for p in st.get("peers", [])] == ["node1"],
                "readable again, it is taken, and node1 is still the peer")
        # A control client that connects and sends nothing must not keep the daemon
        # from stopping (it held the loop until the client went away).
        idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        idle.connect(sock)
        t0 = time.monotonic()
        codes = [n.stop() for n in cl.nodes]
        took = time.monotonic() - t0
        idle.close()
        t.check(codes == [0, 0] and took < 10 * mmtest.SLOW,
                "both daemons stop cleanly on SIGTERM, with an idle control client connected to node2 "
                "(%s, %.1f s)" % (codes, took))
        # A state_dir that is some other directory (a typo: /var/lib for
        # /var/lib/mailmesh) is not handed to the mail user: refused, left as it was.
        other = os.path.join(cl.dir, "not-a-state-dir")
        os.makedirs(os.path.join(other, "something"))
        cl.set_conf(n2, "state_dir", other)
        try:
            r = mmtest.run([mmtest.MAILMESH, "run", "-c", n2.conf], timeout=20 * mmtest.SLOW)
            rc, out = r.returncode, r.stdout + r.stderr
        except subprocess.TimeoutExpired:
            rc, out = "still running", ""
        st = os.stat(other)
        t.check(rc == 1 and "holds other files than mailmesh's" in out and other in out and
                st.st_uid == 0 and st.st_gid == 0,
                "a state_dir holding other files is refused, not chowned (exit %s, owner %d:%d: %s)"
                % (rc, st.st_uid, st.st_gid, out.strip()[-300:]))
    finally:
        cl.close(keep_on_failure=t.failed > failed_before and os.environ.get("KEEP") == "1")


def main():
    t = mmtest.Report("it_daemon_privs")
    mmtest.exit_on_sigterm()
    if os.geteuid() != 0:
        # Switching users needs root; say so instead of pretending to have checked it.
        t.check(False, "this test must run as root (it creates a user and starts the daemon as root)")
        t.finish()
    user = "mmit%d" % (os.getpid() % 100000)
    r = mmtest.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", user])
    try:
        if t.check(r.returncode == 0, "test user %s created (%s)" % (user, r.stderr.strip())):
            pw = pwd.getpwnam(user)
            t.run(privs_test, pw.pw_uid, pw.pw_gid, user)
    finally:
        mmtest.run(["userdel", user])
        mmtest.run(["groupdel", user])  # normally gone with the user; harmless if so
    t.finish()


if __name__ == "__main__":
    main()
