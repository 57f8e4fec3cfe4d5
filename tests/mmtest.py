"""mmtest — shared helpers for mailmesh's integration tests (run with /usr/bin/python3).

A Cluster is a `mailmesh testnet` in a temporary directory with real daemon processes;
it writes Maildir changes the way an MDA or Dovecot would (tmp/ -> new/, renames in cur/,
unlink), reads back each node's Maildirs as comparable content (bodies by hash, flags,
keywords by name, mtimes), and cleans up every process and directory it made, also when
a test fails.  Tests report `N passed, N failed` through Report.
"""
import base64
import hashlib
import imaplib
import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import traceback

TOP = os.environ.get("MAILMESH_TOP") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUILD", "build")
MAILMESH = os.environ.get("MAILMESH") or os.path.join(TOP, BUILD, "mailmesh")
SANITIZE = os.environ.get("SANITIZE", "0") == "1"
# Sanitized binaries are several times slower: scale waiting bounds, never assertions.
SLOW = 4 if SANITIZE else 1

FLAG_LETTERS = "DFPRST"


class Report:
    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0

    def check(self, cond, what):
        if cond:
            self.passed += 1
            print("ok   %s" % what, flush=True)
        else:
            self.failed += 1
            print("FAIL %s" % what, flush=True)
        return cond

    def run(self, fn, *args):
        """Runs one test function; an exception counts as a failure."""
        try:
            fn(self, *args)
        except Exception:
            self.failed += 1
            print("FAIL %s raised:" % fn.__name__, flush=True)
            traceback.print_exc()

    def finish(self):
        print("%s: %d passed, %d failed" % (self.name, self.passed, self.failed), flush=True)
        sys.exit(1 if self.failed else 0)


def exit_on_sigterm():
    """Makes SIGTERM (a timeout, a killed make) raise SystemExit, so the tests' finally
    blocks still stop daemons and remove temp dirs, users and namespaces."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def run(args, **kw):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


class Node:
    def __init__(self, cluster, i):
        self.cluster = cluster
        self.i = i
        self.dir = os.path.join(cluster.dir, "node%d" % i)
        self.conf = os.path.join(self.dir, "mailmesh.conf")
        self.mail = os.path.join(self.dir, "mail")
        self.proc = None
        self.log = os.path.join(cluster.dir, "node%d.log" % i)
        self.prefix = []   # e.g. ["ip", "netns", "exec", NS]: the daemon's command runs after it
        self.env = None    # environment of the daemon (None: inherit)
        self.args = []     # more arguments of `mailmesh run` (e.g. --accept-stale)

    def start(self):
        assert self.proc is None
        logf = open(self.log, "a")
        self.proc = subprocess.Popen(self.prefix + [MAILMESH, "run", "-c", self.conf] + self.args, stdout=logf,
                                     stderr=logf, env=self.env)
        logf.close()
        deadline = time.time() + 20 * SLOW
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("node%d exited at start (%s); log:\n%s" % (self.i, self.proc.returncode, self.log_text()))
            if self.status(quiet=True) is not None:
                return
            time.sleep(0.05)
        raise RuntimeError("node%d did not answer status in time; log:\n%s" % (self.i, self.log_text()))

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stops the daemon; returns its exit status (None if it was not running)."""
        if self.proc is None:
            return None
        p = self.proc
        self.proc = None
        if p.poll() is None:
            p.send_signal(sig)
        try:
            return p.wait(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return "timeout"

    def kill9(self):
        return self.stop(signal.SIGKILL)

    def pid(self):
        """The daemon's process id (the process after self.prefix, which execs), or None."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def vmrss_kb(self, field="VmRSS"):
        """The daemon's resident set size in KiB (from /proc), or None if not running.
        field="RssAnon" gives the anonymous part (heap, stacks) without the file pages
        it has mapped (LMDB's map), which the kernel can drop at will."""
        pid = self.pid()
        if pid is None:
            return None
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def message_count(self):
        """Number of message files in new/ and cur/ of every folder of every user (fast;
        for watching a sync progress)."""
        n = 0
        for dirpath, dirnames, filenames in os.walk(self.mail):
            if os.path.basename(dirpath) in ("new", "cur"):
                n += sum(1 for f in filenames if not f.startswith("."))
                dirnames[:] = []
        return n

    def log_text(self, whole=False):
        """The log's last 4,000 characters (for a failure report), or all of it."""
        try:
            with open(self.log, errors="replace") as f:
                text = f.read()
            return text if whole else text[-4000:]
        except OSError:
            return ""

    def connected(self, peer=None):
        """Whether the daemon answers and shows peer `peer` (a name) connected, or with
        peer None every peer it has."""
        st = self.status(quiet=True)
        if not st:
            return False
        ps = st.get("peers", [])
        if peer is not None:
            return any(p.get("name") == peer and p.get("connected") for p in ps)
        return all(p.get("connected") for p in ps)

    def public_key(self):
        """The node's public key, raw: of two peers, the lower one dials (node/peer.c)."""
        r = run([MAILMESH, "pubkey"], input=open(os.path.join(self.dir, "private.key")).read())
        return base64.b64decode(r.stdout.strip())

    def status(self, quiet=False):
        try:
            r = run([MAILMESH, "status", "-c", self.conf, "--json"], timeout=10 * SLOW)
        except subprocess.TimeoutExpired:
            # A daemon busy for that long (e.g. under ASan) counts as not answering yet.
            if not quiet:
                print("node%d: status timed out" % self.i, file=sys.stderr)
            return None
        if r.returncode != 0:
            if not quiet:
                print(r.stderr, file=sys.stderr)
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            if not quiet:
                print("bad status json: %r" % r.stdout[:500], file=sys.stderr)
            return None

    # ---- Maildir operations, as an MDA / Dovecot would do them ----

    def maildir(self, user, folder="INBOX"):
        dom, name = user.split("/")
        root = os.path.join(self.mail, dom, name)
        return root if folder == "INBOX" else os.path.join(root, "." + folder)

    def ensure_folder(self, user, folder="INBOX"):
        md = self.maildir(user, folder)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
        return md

    def deliver(self, user, body, folder="INBOX", mtime=None):
        md = self.ensure_folder(user, folder)
        base = "%d.M%dP%d.node%d" % (time.time(), random.randrange(1 << 30), os.getpid(), self.i)
        tmp = os.path.join(md, "tmp", base)
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        os.rename(tmp, os.path.join(md, "new", base))
        return base

    def files(self, user, folder="INBOX"):
        """[(subdir, filename)] of the messages in a folder."""
        md = self.maildir(user, folder)
        out = []
        for sub in ("new", "cur"):
            try:
                for n in sorted(os.listdir(os.path.join(md, sub))):
                    if not n.startswith("."):
                        out.append((sub, n))
            except FileNotFoundError:
                pass
        return out

    def set_flags(self, user, folder, sub, name, letters):
        """Renames a message file to carry exactly `letters` (system flags + keyword letters)."""
        md = self.maildir(user, folder)
        base = name.split(":2,")[0]
        new = base + ":2," + "".join(sorted(set(letters)))
        os.rename(os.path.join(md, sub, name), os.path.join(md, "cur", new))
        return new

    def expunge(self, user, folder, sub, name):
        os.unlink(os.path.join(self.maildir(user, folder), sub, name))

    def keywords(self, user, folder):
        """letter -> keyword name from dovecot-keywords."""
        m = {}
        try:
            with open(os.path.join(self.maildir(user, folder), "dovecot-keywords")) as f:
                for line in f:
                    parts = line.split(None, 1)
                    if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) < 26:
                        m[chr(ord("a") + int(parts[0]))] = parts[1].strip()
        except FileNotFoundError:
            pass
        return m

    def add_keyword(self, user, folder, kw):
        """Gives kw a letter in dovecot-keywords as Dovecot does: with the folder's
        dovecot-uidlist.lock held (the daemon names keywords under it too: without it,
        a read here before the daemon's write and a rename after it would give the
        daemon's letter to kw on this node only), temp file + rename."""
        md = self.ensure_folder(user, folder)
        lock = os.path.join(md, "dovecot-uidlist.lock")
        deadline = time.time() + 5 * SLOW
        while True:
            try:
                os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                break
            except FileExistsError:
                if time.time() > deadline:
                    raise
                time.sleep(0.005)
        try:
            m = self.keywords(user, folder)
            for letter, name in m.items():
                if name == kw:
                    return letter
            idx = len(m)
            lines = ["%d %s\n" % (ord(l) - ord("a"), n) for l, n in sorted(m.items())] + ["%d %s\n" % (idx, kw)]
            tmp = os.path.join(md, "dovecot-keywords.tmp%d" % os.getpid())
            with open(tmp, "w") as f:
                f.writelines(lines)
            os.rename(tmp, os.path.join(md, "dovecot-keywords"))
            return chr(ord("a") + idx)
        finally:
            os.unlink(lock)

    def uid_map(self, user, folder="INBOX"):
        """(UIDVALIDITY, sorted [(uid, sha256 of the file)]) from the folder's
        dovecot-uidlist, for the files the folder has: a file no entry lists shows as
        (0, sha).  Entries whose file is gone (expunged; Dovecot drops them at its next
        sync) are left out.  None when there is no uidlist."""
        md = self.maildir(user, folder)
        try:
            with open(os.path.join(md, "dovecot-uidlist")) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return None
        if not lines:
            return None
        uv = next((int(w[1:]) for w in lines[0].split()[1:] if w.startswith("V")), 0)
        files = {}
        for sub, fname in self.files(user, folder):
            try:
                with open(os.path.join(md, sub, fname), "rb") as f:
                    files[fname.split(":")[0]] = hashlib.sha256(f.read()).hexdigest()[:16]
            except FileNotFoundError:
                pass
        out = []
        for line in lines[1:]:
            if " :" not in line:
                continue
            uid = int(line.split()[0])
            base = line.split(" :", 1)[1].split(":")[0]
            if base in files:
                out.append((uid, files.pop(base)))
        out += [(0, h) for h in files.values()]
        return uv, sorted(out, key=lambda e: (e[0], e[1] or ""))

    def uid_maps(self):
        """{(user, folder): uid_map} of every folder content() shows."""
        return {k: self.uid_map(*k) for k in self.content()}

    def content(self):
        """{(user, folder): sorted [(sha256, flags, keywords, mtime)]} of every Maildir."""
        out = {}
        if not os.path.isdir(self.mail):
            return out
        for dom in sorted(os.listdir(self.mail)):
            dpath = os.path.join(self.mail, dom)
            if not os.path.isdir(dpath):
                continue
            for name in sorted(os.listdir(dpath)):
                user = dom + "/" + name
                root = os.path.join(dpath, name)
                folders = ["INBOX"] + sorted(n[1:] for n in os.listdir(root)
                                             if n.startswith(".") and n not in (".", "..") and
                                             os.path.isdir(os.path.join(root, n, "cur")))
                for folder in folders:
                    kw = self.keywords(user, folder)
                    msgs = []
                    for sub, fname in self.files(user, folder):
                        path = os.path.join(self.maildir(user, folder), sub, fname)
                        try:
                            with open(path, "rb") as f:
                                sha = hashlib.sha256(f.read()).hexdigest()[:16]
                            mtime = int(os.stat(path).st_mtime)
                        except FileNotFoundError:
                            continue
                        letters = fname.split(":2,")[1] if ":2," in fname else ""
                        flags = "".join(sorted(c for c in letters if c in FLAG_LETTERS))
                        kws = tuple(sorted(kw.get(c, "?" + c) for c in letters if "a" <= c <= "z"))
                        msgs.append((sha, flags, kws, mtime))
                    out[(user, folder)] = sorted(msgs)
        return out


class Cluster:
    def __init__(self, n, base_port, name="mm"):
        self.dir = tempfile.mkdtemp(prefix="mailmesh-%s-" % name)
        self.base_port = base_port
        r = run([MAILMESH, "testnet", "--nodes", str(n), "--dir", self.dir, "--base-port", str(base_port), "--force"])
        if r.returncode != 0:
            raise RuntimeError("testnet failed: %s%s" % (r.stdout, r.stderr))
        self.nodes = [Node(self, i + 1) for i in range(n)]
        for node in self.nodes:
            self.set_conf(node, "log_level", "debug")
            if os.environ.get("MM_FILE_CACHE"):  # e.g. 0: every lookup through the database
                self.set_conf(node, "file_cache", os.environ["MM_FILE_CACHE"])

    def set_conf(self, node, key, value):
        with open(node.conf) as f:
            lines = [l for l in f if not l.split("=")[0].strip() == key]
        lines.append("%s = %s\n" % (key, value))
        with open(node.conf, "w") as f:
            f.writelines(lines)

    def start(self):
        for node in self.nodes:
            node.start()

    def close(self, keep_on_failure=False):
        for node in self.nodes:
            node.stop(signal.SIGKILL)
        if keep_on_failure:
            print("kept %s for inspection" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def roots(self, nodes=None):
        out = []
        for node in nodes or self.nodes:
            st = node.status(quiet=True)
            out.append(st["root"] if st else None)
        return out

    def agreed_roots(self, timeout=10, nodes=None):
        """The nodes' roots, read again until they agree (or timeout): a change made
        after a convergence was seen, such as the first tombstone-GC horizon a daemon
        records about a second after its start, takes a moment to reach every node."""
        deadline = time.time() + timeout * SLOW
        while True:
            r = self.roots(nodes)
            if (len(set(r)) == 1 and r[0]) or time.time() >= deadline:
                return r
            time.sleep(0.1)

    def converged(self, nodes=None):
        """True when every node answers, all roots agree, no body is missing, and the
        Maildir contents are identical."""
        nodes = nodes or self.nodes
        sts = [n.status(quiet=True) for n in nodes]
        if any(s is None for s in sts):
            return False
        if len(set(s["root"] for s in sts)) != 1 or any(s["missing_bodies"] for s in sts):
            return False
        c0 = nodes[0].content()
        return all(n.content() == c0 for n in nodes[1:])

    def wait_converged(self, timeout=60, nodes=None):
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            if self.converged(nodes):
                return True
            time.sleep(0.2)
        return False

    def wait_settled(self, timeout=60, quiet=2.0, nodes=None, uid_authority=False):
        """Like wait_converged, but the converged state must also hold still for `quiet`
        seconds (same roots): a node that has just caught up plans its folders again and
        may ask for UID moves, whose re-files change files under a reader.  With
        uid_authority, the quiet time counts only while one of the nodes is the IMAP UID
        authority: only it moves the messages others asked to move, and no node is in
        its first 5 s, so converged and quiet before that says nothing about moves."""
        deadline = time.time() + timeout * SLOW
        since, roots = None, None
        while time.time() < deadline:
            if self.converged(nodes) and (not uid_authority or self.uid_authorities(nodes) == 1):
                r = self.roots(nodes)
                if r != roots:
                    since, roots = time.time(), r
                elif time.time() - since >= quiet:
                    return True
            else:
                since, roots = None, None
            time.sleep(0.2)
        return False

    def uid_authorities(self, nodes=None):
        """How many of the nodes say they are the IMAP UID authority."""
        return sum(1 for n in nodes or self.nodes if (n.status(quiet=True) or {}).get("uid_authority"))

    def explain(self, nodes=None):
        """Prints how the nodes differ (for a failed convergence): the log tails first,
        then the differences, so that the last lines of a test log (all a CI report
        shows) say what differed."""
        nodes = nodes or self.nodes
        for n in nodes:
            print("---- node%d log tail ----\n%s" % (n.i, n.log_text()[-2500:]))
        for n in nodes:
            st = n.status(quiet=True)
            print("node%d root=%s missing=%s" % (n.i, st and st["root"][:16], st and st["missing_bodies"]))
        c0 = nodes[0].content()
        for n in nodes[1:]:
            c = n.content()
            for k in sorted(set(c0) | set(c)):
                if c0.get(k) != c.get(k):
                    a, b = set(c0.get(k, [])), set(c.get(k, []))
                    print("node1 vs node%d %s: %s; only node1 %s; only node%d %s" %
                          (n.i, k, "folder only on node%d" % (1 if k in c0 else n.i)
                           if (k in c0) != (k in c) else "both have the folder",
                           sorted(a - b)[:3], n.i, sorted(b - a)[:3]))



def dovecot_conf(base, mail_root, imap_port, lmtp_port, uid=65534, instance=None,
                 users_file=None, extra=""):
    """A private Dovecot 2.3 for a test or benchmark: its own base_dir, state and log
    under `base`, Maildirs at mail_root/%d/%n, LMTP (and IMAP unless imap_port is 0) on
    loopback, every other listener off.  Users: a static passdb (password "pw") and
    userdb serving as `uid`, or, with users_file, a passwd-file for both (Dovecot's
    replicator needs a userdb it can list).  `extra` is appended (plugins, services)."""
    name = "instance_name = %s\n" % instance if instance else ""
    protocols = "imap lmtp" if imap_port else "lmtp"
    if users_file:
        auth = (f"passdb {{\n  driver = passwd-file\n  args = {users_file}\n}}\n"
                f"userdb {{\n  driver = passwd-file\n  args = {users_file}\n}}")
    else:
        auth = (f"passdb {{\n  driver = static\n  args = password=pw\n}}\n"
                f"userdb {{\n  driver = static\n  args = uid={uid} gid={uid} home={base}/home/%d/%n\n}}")
    return f"""
base_dir = {base}/run
state_dir = {base}/dstate
log_path = {base}/dovecot.log
{name}protocols = {protocols}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{mail_root}/%d/%n
postmaster_address = postmaster@example.org
default_internal_user = dovecot
default_login_user = dovenull
{auth}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
}}
{extra}
"""

def message(i, size=None, rnd=random):
    """A plausible RFC 5322 message, unique by i, of about `size` bytes."""
    size = size or rnd.randrange(600, 4000)
    head = ("From: sender%d@example.net\r\nTo: alice@example.org\r\nSubject: test message %d\r\n"
            "Message-ID: <%d.%d@example.net>\r\nDate: Sun, 29 Nov 2026 05:00:00 +0000\r\n\r\n"
            % (i, i, i, rnd.randrange(1 << 40)))
    line = "The quick brown fox jumps over the lazy dog %d.\r\n" % i
    body = (line * (max(1, size - len(head)) // len(line) + 1))[: max(1, size - len(head))]
    return (head + body).encode()


NOBODY = 65534


class Dovecot:
    """A private Dovecot (IMAP + LMTP on loopback, own config/base_dir/log, mail user
    nobody) serving `node`'s Maildirs; user is the login/recipient (password "pw");
    `extra` is appended to its config (plugins)."""

    def __init__(self, node, imap_port, lmtp_port, user, extra=""):
        self.node = node
        self.imap_port, self.lmtp_port, self.user = imap_port, lmtp_port, user
        self.i = node.i
        self.dir = os.path.join(node.dir, "dovecot")
        os.makedirs(os.path.join(self.dir, "home"))
        os.chown(os.path.join(self.dir, "home"), NOBODY, NOBODY)
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(dovecot_conf(self.dir, node.mail, imap_port, lmtp_port, NOBODY, "mm-it-%d-node%d" % (imap_port, self.i),
                                 extra=extra))
        self.pidfile = os.path.join(self.dir, "run", "master.pid")
        self.log = os.path.join(self.dir, "dovecot.log")

    def start(self):
        # The master daemonizes: give it a file, not a pipe it would keep open.
        with open(os.path.join(self.dir, "start.log"), "w") as lf:
            p = subprocess.run(["dovecot", "-c", self.conf], stdout=lf, stderr=lf, timeout=60)
        if p.returncode != 0:
            raise RuntimeError("dovecot %d did not start: %s" % (self.i, open(os.path.join(self.dir, "start.log")).read()))
        for port in (self.imap_port, self.lmtp_port):
            if not wait_port(port):
                raise RuntimeError("dovecot %d does not listen on %d" % (self.i, port))

    def stop(self):
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            return
        for _ in range(200):
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

    def log_problems(self):
        try:
            with open(self.log) as f:
                text = f.read()
        except OSError:
            return []
        return [l for l in text.splitlines() if re.search(r"\b(Error|Panic|Fatal|Warning)\b", l)]

    def imap(self):
        m = imaplib.IMAP4("127.0.0.1", self.imap_port)
        m.login(self.user, "pw")
        return m

    def lmtp_deliver(self, subject, body):
        msg = ("From: bob@example.net\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s.%d@example.net>\r\n\r\n%s\r\n"
               % (self.user, subject, subject, os.getpid(), body))
        with smtplib.LMTP("127.0.0.1", self.lmtp_port) as s:
            s.sendmail("bob@example.net", [self.user], msg.encode())


def wait_for(cond, timeout=30, step=0.05):
    """Calls cond() until it returns a true value or timeout seconds (times SLOW) have
    passed; returns that value, or cond()'s last one."""
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def wait_port(port):
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def wait_uidlist(nodes, user, folder="INBOX", timeout=60):
    """Waits until mailmesh wrote the folder's dovecot-uidlist on these nodes.  A client
    logging in on a node before that makes its Dovecot create the user's INBOX itself,
    under its own UIDVALIDITY; the cluster's value then wins and that Dovecot resets its
    index once, with a warning (docs/design.md, "IMAP UIDs")."""
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        if all(os.path.exists(os.path.join(n.maildir(user, folder), "dovecot-uidlist")) for n in nodes):
            return True
        time.sleep(0.1)
    return False
