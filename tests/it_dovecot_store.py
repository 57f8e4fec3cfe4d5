#!/usr/bin/python3
"""it_dovecot_store.py — the Maildir store against a real, private Dovecot.

Starts Dovecot (own base_dir, IMAP on 127.0.0.1:23000, LMTP on 127.0.0.1:23001,
mail_location = maildir:<tmp>/a/%d/%n, mail user nobody), delivers by LMTP, flags,
creates/subscribes and expunges by IMAP, and checks that `build/tests/store scan`
sees exactly those changes.  Then a second Maildir tree (no Dovecot) changes a flag
and gets a new message, `store sync` mirrors it into Dovecot's Maildir, and IMAP must
serve the new message and flags; Dovecot's log must hold no error.
Prints `N passed, N failed`; cleans up (kills Dovecot, removes the temp dir) always.
"""
import imaplib
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

TOP = os.environ.get("MAILMESH_TOP", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("BUILD", "build")
TOOL = os.path.join(TOP, BUILD, "tests", "store")
IMAP_PORT, LMTP_PORT = 23000, 23001
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print("ok   ", name)
    else:
        failed += 1
        print("FAIL ", name, detail)




def run_tool(*args):
    p = subprocess.run([TOOL, *args], capture_output=True, text=True, timeout=120)
    if p.stderr:
        sys.stdout.write("  store stderr: " + p.stderr.replace("\n", "\n  "))
    return p.returncode, p.stdout.splitlines()


def lmtp_deliver(rcpt, subject, body):
    msg = f"From: bob@ex.org\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\n{body}\r\n"
    with smtplib.LMTP("127.0.0.1", LMTP_PORT) as s:
        s.sendmail("bob@ex.org", [rcpt], msg.encode())


def imap():
    m = imaplib.IMAP4("127.0.0.1", IMAP_PORT)
    m.login("alice@ex.org", "pw")
    return m


def main():
    t = tempfile.mkdtemp(prefix="mm-it-dovecot-")
    os.chmod(t, 0o755)
    conf_path = os.path.join(t, "dovecot.conf")
    pidfile = os.path.join(t, "run", "master.pid")
    try:
        with open(conf_path, "w") as f:
            f.write(mmtest.dovecot_conf(t, t + "/a", IMAP_PORT, LMTP_PORT))
        for d in ("a", "b", "home"):
            os.makedirs(os.path.join(t, d))
            os.chown(os.path.join(t, d), 65534, 65534)
        # the master daemonizes: give it a file, not a pipe it would keep open
        with open(os.path.join(t, "start.log"), "w") as lf:
            p = subprocess.run(["dovecot", "-c", conf_path], stdout=lf, stderr=lf, timeout=60)
        check("dovecot starts", p.returncode == 0, open(os.path.join(t, "start.log")).read())
        if p.returncode != 0 or not mmtest.wait_port(IMAP_PORT) or not mmtest.wait_port(LMTP_PORT):
            return
        loc_a, st_a = f"maildir:{t}/a/%d/%n", f"{t}/state-a"
        loc_b, st_b = f"maildir:{t}/b/%d/%n", f"{t}/state-b"

        # 1. LMTP deliveries
        lmtp_deliver("alice@ex.org", "one", "first body")
        lmtp_deliver("alice@ex.org", "two", "second body")
        rc, out = run_tool("scan", loc_a, st_a)
        msgs = [l for l in out if l.startswith("MSG ")]
        check("scan sees the 2 LMTP deliveries", rc == 0 and len(msgs) == 2 and
              all(l.startswith("MSG ex.org/alice INBOX ") for l in msgs), out)
        rc, out = run_tool("scan", loc_a, st_a)
        check("a second scan sees nothing", rc == 0 and out == [], out)

        # 2. flags and a keyword by IMAP
        m = imap()
        m.select("INBOX")
        m.store("1", "+FLAGS", "(\\Flagged)")
        m.store("2", "+FLAGS", "($Work)")
        m.create("Work")
        m.subscribe("Work")
        m.logout()
        rc, out = run_tool("scan", loc_a, st_a)
        msgs = [l for l in out if l.startswith("MSG ")]
        flagged = [l for l in msgs if l.split()[4] == "F"]
        work = [l for l in msgs if "$Work" in l.split()[5]]
        folders = [l for l in out if l.startswith("FOLDER ex.org/alice Work exists=1 sub=1")]
        check("scan sees \\Flagged and $Work exactly", rc == 0 and len(msgs) == 2 and
              len(flagged) == 1 and len(work) == 1, out)
        check("scan sees folder Work created and subscribed", len(folders) == 1, out)
        rc, out = run_tool("scan", loc_a, st_a)
        check("no change after flags", rc == 0 and out == [], out)

        # 3. expunge by IMAP
        m = imap()
        m.select("INBOX")
        m.store("1", "+FLAGS", "(\\Deleted)")
        m.expunge()
        m.logout()
        rc, out = run_tool("scan", loc_a, st_a)
        check("scan sees the expunge", rc == 0 and sum(l.startswith("TOMB ") for l in out) == 1, out)

        # 4. the store writes: mirror into tree B, change there, sync back into Dovecot's
        rc, out = run_tool("sync", loc_a, st_a, loc_b, st_b)
        check("sync A -> B", rc == 0, out)
        bdir = f"{t}/b/ex.org/alice"
        cur = os.listdir(f"{bdir}/cur") + os.listdir(f"{bdir}/new")
        check("B holds the remaining message", len(cur) == 1, cur)
        with open(f"{bdir}/new/1700000000.M1P1.otherhost,S=42", "wb") as f:
            f.write(b"From: carol@ex.org\r\nSubject: three\r\n\r\nthird body!\r\n")
        os.utime(f"{bdir}/new/1700000000.M1P1.otherhost,S=42", (1500000000, 1500000000))
        for sub in ("cur", "new"):
            for n in os.listdir(f"{bdir}/{sub}"):
                if "otherhost" in n:
                    continue
                base = n.split(":")[0]
                flags = n.split(":2,")[1] if ":2," in n else ""
                os.rename(f"{bdir}/{sub}/{n}", f"{bdir}/cur/{base}:2," + "".join(sorted(flags + "S")))
        rc, out = run_tool("sync", loc_a, st_a, loc_b, st_b)
        check("sync B -> A", rc == 0, out)
        rc, out = run_tool("scan", loc_a, st_a)
        check("no echo of the store's own writes", rc == 0 and out == [], out)

        m = imap()
        m.select("INBOX")
        typ, data = m.fetch("1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
        m.logout()
        items = [d for d in data if isinstance(d, tuple)]
        check("Dovecot serves 2 messages", len(items) == 2, data)
        bodies = [it[1] for it in items]
        heads = [it[0].decode() for it in items]
        check("Dovecot serves the store's message body",
              any(b.endswith(b"third body!\r\n") for b in bodies), bodies)
        check("Dovecot serves \\Seen and $Work set elsewhere",
              any("\\Seen" in h and "$Work" in h for h in heads), heads)
        check("INTERNALDATE is the original mtime",
              any("14-Jul-2017" in h for h in heads), heads)
        owned = [os.stat(f"{t}/a/ex.org/alice/{s}/{n}").st_uid
                 for s in ("cur", "new") for n in os.listdir(f"{t}/a/ex.org/alice/{s}")]
        check("files written for Dovecot belong to its mail user", owned and all(u == 65534 for u in owned), owned)
        log = open(f"{t}/dovecot.log").read() if os.path.exists(f"{t}/dovecot.log") else ""
        bad = [l for l in log.splitlines() if "Error" in l or "Panic" in l or "Fatal" in l or "Warning" in l]
        check("Dovecot's log has no error or warning", not bad, bad)
    finally:
        try:
            with open(pidfile) as f:
                os.kill(int(f.read().strip()), signal.SIGTERM)
            for _ in range(100):
                if not os.path.exists(pidfile):
                    break
                time.sleep(0.05)
        except (OSError, ValueError):
            pass
        shutil.rmtree(t, ignore_errors=True)
        print(f"{passed} passed, {failed} failed")


main()
sys.exit(1 if failed else 0)
