"""it_dovecot_uids.py — issue 7 with real Dovecots: the same IMAP identity on every node.

Four mailmesh daemons with `imap_uids = yes`, each with a private Dovecot (IMAP + LMTP);
node 4 starts only at step 5.  Ports 23050-23069: mailmesh 23050-23053, Dovecot of node i
IMAP 23060+2(i-1), LMTP 23061+2(i-1).  An IMAP client reads (UIDVALIDITY, UID -> Subject)
of a folder on each node; the maps must agree:

1. five deliveries through LMTP on node 1 (Dovecot creates the user's INBOX and numbers
   it: every node must show node 1's UIDVALIDITY and UIDs);
2. deliveries on nodes 1, 2 and 3 at the same moment (UID conflicts forced): maps agree
   again, and the five messages of step 1 kept their UIDs;
3. CREATE and COPY into a new folder over IMAP on node 2;
4. node 3's daemon restarts; then a delivery on node 3;
5. node 4 joins empty (daemon and Dovecot started now) and shows the same maps;
6. two messages expunged on node 1 leave the other nodes' dovecot-uidlist too;
7. RENAME of a folder on node 2: the new name with the same UIDs everywhere, the old
   name gone everywhere (it once came back empty);
8. DELETE of a folder holding messages on node 3: gone everywhere;
and no Dovecot log holds an error, warning or panic (no uidlist or index complaint).
Dovecot and the daemons are stopped and the temp dir removed always.  Prints
`N passed, N failed`."""
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

BASE = 23050
USER = "alice@example.org"
MMUSER = "example.org/alice"


def imap_port(i):
    return 23060 + 2 * (i - 1)


def lmtp_port(i):
    return 23061 + 2 * (i - 1)


def uid_map(dc, folder="INBOX"):
    """(UIDVALIDITY, {subject: uid}) of `folder` as this node's Dovecot serves it, or
    None when the folder cannot be selected."""
    try:
        m = dc.imap()
    except Exception:
        return None
    try:
        typ, _ = m.select(folder, readonly=True)
        if typ != "OK":
            return None
        uv = int(m.response("UIDVALIDITY")[1][0])
        typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out = {}
        for item in data or []:
            if not isinstance(item, tuple):
                continue
            head = item[0].decode()
            uid = int(head.split("UID ")[1].split()[0].rstrip(")"))
            subj = item[1].decode().split(":", 1)[1].strip() if b":" in item[1] else "?"
            out[subj] = uid
        return uv, out
    except Exception:
        return None
    finally:
        try:
            m.logout()
        except Exception:
            pass


def wait_maps(dcs, folder, n, timeout=60):
    """Polls until every Dovecot serves the same (UIDVALIDITY, map) with n messages and
    that stays so for 1.5 s; returns the maps, or the last ones seen when it never does."""
    deadline = time.time() + timeout * mmtest.SLOW
    last, since, maps = None, 0, None
    while time.time() < deadline:
        maps = [uid_map(dc, folder) for dc in dcs]
        if all(m == maps[0] for m in maps) and maps[0] and len(maps[0][1]) == n:
            if maps != last:
                last, since = maps, time.time()
            elif time.time() - since >= 1.5:
                return maps, True
        else:
            last = None
        time.sleep(0.25)
    return maps, False


def folder_state(node, folder):
    """(base names of the files in new/ and cur/, base names dovecot-uidlist lists) of a
    folder on a node's disk."""
    d = node.maildir(MMUSER, folder)
    files, listed = set(), set()
    for sub in ("new", "cur"):
        try:
            files |= {x.split(":")[0] for x in os.listdir(os.path.join(d, sub))}
        except FileNotFoundError:
            pass
    try:
        with open(os.path.join(d, "dovecot-uidlist")) as f:
            for line in f.read().splitlines()[1:]:
                if " :" in line:
                    listed.add(line.split(" :", 1)[1].split(":")[0])
    except FileNotFoundError:
        pass
    return files, listed


def wait_folder(nodes, folder, n, timeout=60):
    """Until each node holds n files in the folder and its dovecot-uidlist lists exactly
    those."""
    deadline = time.time() + timeout * mmtest.SLOW
    while time.time() < deadline:
        states = [folder_state(x, folder) for x in nodes]
        if all(len(files) == n and listed == files for files, listed in states):
            return True
        time.sleep(0.1)
    return False


def wait_lists(dcs, absent, timeout=30):
    """The folder names each Dovecot lists, once they agree and `absent` is not among
    them (or at the timeout)."""
    deadline = time.time() + timeout * mmtest.SLOW
    while True:
        names = []
        for dc in dcs:
            m = dc.imap()
            typ, data = m.list()
            m.logout()
            names.append(sorted(x.decode().rsplit(" ", 1)[1].strip('"') for x in data or []))
        if all(x == names[0] for x in names) and absent not in names[0] or time.time() > deadline:
            return names
        time.sleep(0.25)


def show(maps):
    return "; ".join("node%d %s" % (i + 1, m) for i, m in enumerate(maps or []))


def uid_test(t, cl, dcs):
    d1, d2, d3, d4 = dcs
    live = [d1, d2, d3]
    # 1. deliveries on node 1: Dovecot makes INBOX and numbers it
    for k in range(5):
        d1.lmtp_deliver("first-%d" % k, "body %d" % k)
    t.check(mmtest.wait_uidlist(cl.nodes[1:3], MMUSER), "1. mailmesh creates alice's INBOX with its uidlist on nodes 2 and 3")
    maps, ok = wait_maps(live, "INBOX", 5)
    t.check(ok, "1. five deliveries on node 1: every node shows the same UIDVALIDITY and UID map (%s)" % show(maps))
    first = maps[0] if ok else None
    t.check(first and sorted(first[1].values()) == [1, 2, 3, 4, 5],
            "1. ... the UIDs node 1's Dovecot gave them, 1-5 (%s)" % (first,))

    # 2. concurrent deliveries on three nodes
    barrier = threading.Barrier(3)
    errors = []

    def burst(dc):
        try:
            barrier.wait(timeout=30)
            for k in range(3):
                dc.lmtp_deliver("burst-%d-%d" % (dc.i, k), "concurrent body %d on node %d" % (k, dc.i))
        except Exception as e:  # reported below
            errors.append(repr(e))

    th = [threading.Thread(target=burst, args=(dc,)) for dc in live]
    for x in th:
        x.start()
    for x in th:
        x.join(timeout=60)
    t.check(not errors, "2. concurrent LMTP deliveries on nodes 1-3 succeed (%s)" % errors)
    maps, ok = wait_maps(live, "INBOX", 14)
    t.check(ok, "2. after concurrent deliveries every node shows the same UIDVALIDITY and UID map (%s)" % show(maps))
    if ok and first:
        t.check(maps[0][0] == first[0] and all(maps[0][1].get(s) == u for s, u in first[1].items()),
                "2. ... and the messages of step 1 kept their UIDVALIDITY and UIDs")
        uids = list(maps[0][1].values())
        t.check(len(set(uids)) == len(uids), "2. ... no UID names two messages")

    # 3. CREATE + COPY on node 2
    m = d2.imap()
    typ_c, _ = m.create("Work")
    m.select("INBOX")
    typ, data = m.uid("SEARCH", None, "SUBJECT", "first-")
    want = data[0].split()[:3] if typ == "OK" and data and data[0] else []
    typ_cp = m.uid("COPY", b",".join(want).decode() or "1", "Work")[0]
    m.logout()
    t.check(typ_c == "OK" and typ_cp == "OK" and len(want) == 3, "3. CREATE Work and COPY 3 messages on node 2 succeed")
    maps, ok = wait_maps(live, "Work", 3)
    t.check(ok, "3. the copies show under the same UIDVALIDITY and UIDs on every node (%s)" % show(maps))
    work = maps[0] if ok else None

    # 4. node 3's daemon restarts; a delivery on node 3 afterwards
    before = uid_map(d1, "INBOX")
    code = cl.nodes[2].stop()
    cl.nodes[2].start()
    t.check(code == 0, "4. node 3's daemon stops cleanly (%s)" % code)
    maps, ok = wait_maps(live, "INBOX", 14)
    t.check(ok and maps[0] == before, "4. after node 3 restarts, the maps are unchanged (%s)" % show(maps))
    d3.lmtp_deliver("after-restart", "delivered on node 3 after its restart")
    maps, ok = wait_maps(live, "INBOX", 15)
    t.check(ok, "4. a delivery on node 3 after its restart has the same UID everywhere (%s)" % show(maps))

    # 5. node 4 joins empty
    os.makedirs(cl.nodes[3].mail, exist_ok=True)
    os.chown(cl.nodes[3].mail, mmtest.NOBODY, mmtest.NOBODY)
    d4.start()
    cl.nodes[3].start()
    t.check(mmtest.wait_uidlist(cl.nodes[3:], MMUSER, timeout=90), "5. node 4 receives alice's INBOX")
    maps, ok = wait_maps(dcs, "INBOX", 15, timeout=90)
    t.check(ok, "5. node 4 joins empty and shows INBOX under the same UIDVALIDITY and UIDs (%s)" % show(maps))
    maps, ok = wait_maps(dcs, "Work", 3)
    t.check(ok and maps[0] == work, "5. ... and Work too (%s)" % show(maps))

    # 6. a folder no client opens on nodes 2-4 (as on a standby): two messages expunged
    # on node 1 leave those nodes' dovecot-uidlist as well as their Maildir.  Dovecot
    # drops the entry of a vanished file only when it syncs the folder, which nothing
    # does there; mailmesh drops the entries of the files it removes itself.
    m = d1.imap()
    typ_c, _ = m.create("Archive")
    for k in range(4):
        m.append("Archive", None, None, ("Subject: archived-%d\r\n\r\nold mail %d\r\n" % (k, k)).encode())
    t.check(typ_c == "OK" and wait_folder(cl.nodes[1:4], "Archive", 4),
            "6. CREATE Archive and 4 APPENDs on node 1 reach nodes 2-4, listed in their dovecot-uidlist (%s)"
            % [folder_state(n, "Archive") for n in cl.nodes[1:4]])
    m.select("Archive")
    typ, data = m.uid("SEARCH", None, "OR", "SUBJECT", "archived-1", "SUBJECT", "archived-2")
    gone = data[0].split() if typ == "OK" and data and data[0] else []
    if gone:
        m.uid("STORE", b",".join(gone).decode(), "+FLAGS.SILENT", "(\\Deleted)")
        m.expunge()
    m.logout()
    t.check(len(gone) == 2 and wait_folder(cl.nodes[1:4], "Archive", 2),
            "6. after 2 messages are expunged on node 1, nodes 2-4 hold 2 files and their dovecot-uidlist lists "
            "those 2 only (%s)" % [folder_state(n, "Archive") for n in cl.nodes[1:4]])
    opened = [n.i for n in cl.nodes[1:4] if any(x.startswith("dovecot.index") for x in
                                                 os.listdir(n.maildir(MMUSER, "Archive")))]
    t.check(not opened, "6. ... without any Dovecot syncing the folder there (index files on nodes %s)" % opened)
    maps, ok = wait_maps(dcs, "Archive", 2)
    t.check(ok, "6. ... and every node's Dovecot then shows the same 2 messages under the same UIDs (%s)"
            % show(maps))

    # 7. RENAME Work -> Projects on node 2 (a user renaming a folder in a mail client):
    # every node shows Projects with the messages Work held, Work is gone everywhere,
    # and the other nodes file them from the bytes they hold (no body sent again).
    # Whether node 2's scan records the rename as moves or as expunges + new messages
    # depends on event timing; test_store test_remote_rename_scan_before_commit pins
    # the second way, which once fetched every message again.
    def bodies_in():
        sts = [n.status(quiet=True) or {} for n in cl.nodes]
        return [sum(p.get("bodies_in", 0) for p in st.get("peers", [])) for st in sts]
    got_before = bodies_in()
    m = d2.imap()
    m.select("Work")
    typ, data = m.uid("SEARCH", None, "ALL")
    m.uid("STORE", data[0].split()[0].decode() if typ == "OK" and data[0] else "1", "+FLAGS", "(\\Flagged)")
    m.close()
    typ_r, _ = m.rename("Work", "Projects")
    m.logout()
    before = uid_map(d2, "Projects")
    t.check(typ_r == "OK" and before and len(before[1]) == 3,
            "7. RENAME Work Projects on node 2 succeeds; node 2 shows its 3 messages there (%s)" % (before,))
    maps, ok = wait_maps(dcs, "Projects", 3)
    t.check(ok, "7. every node shows Projects with the same 3 messages under the same UIDs (%s)" % show(maps))
    t.check(ok and maps[0] == before, "7. ... the UIDVALIDITY and UIDs node 2's Dovecot kept (%s; node 2 %s)"
            % (show(maps), before))
    names = wait_lists(dcs, "Work")
    t.check(all(x == names[0] for x in names) and "Work" not in names[0] and "Projects" in names[0],
            "7. ... every node lists the same folders, Projects and not Work (%s)" % names)
    time.sleep(1)
    left = [n.i for n in cl.nodes if os.path.exists(n.maildir(MMUSER, "Work"))]
    t.check(not left, "7. ... and no node has Work's directory a second later (nodes %s)" % left)
    got = bodies_in()
    t.check(got == got_before, "7. ... no node was sent a body for it (bodies received: before %s, after %s)"
            % (got_before, got))
    flagged = []
    for dc in dcs:
        mm = dc.imap()
        mm.select("Projects", readonly=True)
        typ, data = mm.uid("SEARCH", None, "FLAGGED")
        mm.logout()
        flagged.append(data[0].split() if typ == "OK" else None)
    t.check(all(x == flagged[0] for x in flagged) and flagged[0] and len(flagged[0]) == 1,
            "7. ... and the message flagged before the rename is flagged on every node, under one UID (%s)"
            % flagged)

    # 8. DELETE Archive (2 messages) on node 3: gone from every node, and stays gone
    m = d3.imap()
    typ_d, _ = m.delete("Archive")
    m.logout()
    names = wait_lists(dcs, "Archive")
    t.check(typ_d == "OK" and all(x == names[0] for x in names) and "Archive" not in names[0],
            "8. DELETE Archive on node 3: every node lists the same folders, without Archive (%s)" % names)
    time.sleep(1)
    left = [n.i for n in cl.nodes if os.path.exists(n.maildir(MMUSER, "Archive"))]
    t.check(not left, "8. ... and no node has its directory a second later (nodes %s)" % left)

    for dc in dcs:
        problems = dc.log_problems()
        t.check(not problems, "Dovecot %d's log has no error, warning or panic (%s)" % (dc.i, problems[:5]))


def main():
    t = mmtest.Report("it_dovecot_uids")
    mmtest.exit_on_sigterm()
    cl = mmtest.Cluster(4, BASE, name="uids")
    dcs = []
    started = []
    failed = True
    try:
        os.chmod(cl.dir, 0o755)
        for node in cl.nodes:
            cl.set_conf(node, "imap_uids", "yes")
            os.chmod(node.dir, 0o755)
            os.makedirs(node.mail, exist_ok=True)
            os.chown(node.mail, mmtest.NOBODY, mmtest.NOBODY)
            dcs.append(mmtest.Dovecot(node, imap_port(node.i), lmtp_port(node.i), USER))
        for dc in dcs[:3]:
            dc.start()
        for node in cl.nodes[:3]:
            node.start()
        started = dcs
        t.run(uid_test, cl, dcs)
        if t.failed:
            # what each daemon decided about UIDs, to tell a rule bug from a slow run
            for node in cl.nodes:
                lines = [l for l in node.log_text().splitlines()
                         if re.search(r"UID|authority|held|hold", l)]
                print("---- node%d: UID decisions (last 40 of %d) ----\n%s" %
                      (node.i, len(lines), "\n".join(lines[-40:])), flush=True)
        codes = [node.stop() for node in cl.nodes]
        t.check(codes == [0] * 4, "every daemon stops cleanly on SIGTERM (%s)" % codes)
        failed = t.failed > 0
    except Exception:
        import traceback
        traceback.print_exc()
        t.failed += 1
    finally:
        for dc in started or dcs:
            dc.stop()
        if failed and os.environ.get("KEEP") == "1":
            print("kept %s" % cl.dir)
        cl.close(keep_on_failure=failed and os.environ.get("KEEP") == "1")
    t.finish()


if __name__ == "__main__":
    main()
