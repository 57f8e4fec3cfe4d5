"""it_daemon_intruder.py — a process that is not in the peers file connects and gets
nothing.  Real daemons on loopback, ports 22070-22079.

A 3-node cluster holds mail.  Then:
1. Two intruding mailmesh daemons with fresh keys, chosen to sort lower than every
   cluster key so that they dial (the lower key connects): one under a new name, one
   calling itself node2.  Their peers files list the cluster, with their own line.
   Each cluster node must log `refused ... unknown key`, never show them connected; their
   Maildirs must stay empty of the cluster's mail (and the cluster must not get the
   message in theirs), while mail delivered meanwhile still reaches every cluster node.
2. Raw Noise IK handshakes from Python (python3-dissononce): as a positive control, node2's
   real key gets message 2 back from node1 (so the handshake is well formed); a fresh key,
   and node2's public key claimed without its private key, get not one byte back; random
   bytes on TCP and UDP get nothing either; the cluster stays converged.
Prints `N passed, N failed`."""
import base64
import hashlib
import os
import socket
import struct
import sys
import time

from dissononce.dh.keypair import KeyPair
from dissononce.dh.x25519.private import PrivateKey
from dissononce.dh.x25519.public import PublicKey
from dissononce.dh.x25519.x25519 import X25519DH
from dissononce.extras.meta.protocol.factory import NoiseProtocolFactory

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

BASE = 22070
USER = "example.org/alice"
SECRET = b"From: mallory@example.com\r\nSubject: intruder's own\r\n\r\nshould never spread\r\n"


def read_pub(conf_dir):
    r = mmtest.run([mmtest.MAILMESH, "pubkey"], input=open(os.path.join(conf_dir, "private.key")).read())
    return r.stdout.strip()


def read_priv(conf_dir):
    with open(os.path.join(conf_dir, "private.key")) as f:
        return base64.b64decode(f.read().strip())


def lower_key(path, below):
    """Writes a fresh private key to path whose public key sorts below every key in
    `below` (base64); returns the public key (base64).  Keys are drawn in-process
    (cryptography's X25519, which python3-dissononce brings): the lowest of the
    cluster's keys can sit so low that a few hundred `mailmesh genkey` runs miss it
    (it did once in CI); here up to 200,000 draws (about 40 s at worst, a few draws
    usually).  `mailmesh pubkey` must then
    agree on the public key, so the key file is what the daemon reads."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    lows = [base64.b64decode(b) for b in below]
    for _ in range(200000):
        k = X25519PrivateKey.generate()
        pub = k.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
        if not all(pub < b for b in lows):
            continue
        priv = k.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(priv).decode() + "\n")
        got = mmtest.run([mmtest.MAILMESH, "pubkey"], input=open(path).read()).stdout.strip()
        assert got == base64.b64encode(pub).decode(), "mailmesh pubkey disagrees: %s" % got
        return got
    raise RuntimeError("no key sorting below the cluster's found")


class Intruder(mmtest.Node):
    """A mailmesh daemon with its own config, outside the cluster's peers file."""

    def __init__(self, cluster, i, name, port, cluster_lines, cluster_pubs):
        super().__init__(cluster, i)
        self.dir = os.path.join(cluster.dir, "intruder%d" % i)
        os.makedirs(self.dir)
        self.conf = os.path.join(self.dir, "mailmesh.conf")
        self.mail = os.path.join(self.dir, "mail")
        os.makedirs(self.mail)
        self.log = os.path.join(cluster.dir, "intruder%d.log" % i)
        self.label = "intruder '%s'" % name
        key = os.path.join(self.dir, "private.key")
        self.pub = lower_key(key, cluster_pubs)
        lines = [l for l in cluster_lines if l.split()[0] != name]
        with open(os.path.join(self.dir, "peers"), "w") as f:
            f.write("".join(lines) + "%s 127.0.0.1:%d %s\n" % (name, port, self.pub))
        with open(self.conf, "w") as f:
            f.write("name = %s\nlisten = 127.0.0.1:%d\nprivate_key = private.key\npeers = peers\n"
                    "mail_location = %s/%%d/%%n\nstate_dir = state\ngossip_interval = 100ms\n"
                    "log_level = debug\n" % (name, port, self.mail))


def count_in(path, word):
    try:
        with open(path) as f:
            return f.read().count(word)
    except OSError:
        return 0


def frame(b):
    return len(b).to_bytes(2, "big") + b


def tai64n():
    now = time.time()
    return struct.pack(">QI", (1 << 62) + int(now), int((now % 1) * 1e9))


def raw_handshake(port, responder_pub, kp):
    """Sends a Noise IKpsk2 message 1 (payload version 1 + TAI64N, mailmesh's prologue,
    zero psk) to 127.0.0.1:port as `kp`; returns every byte the node sends back before it
    closes the connection (or 5 s pass)."""
    np = NoiseProtocolFactory().get_noise_protocol("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b")
    hs = np.create_handshakestate()
    hs.initialize(np.pattern, True, b"mailmesh channel v1", s=kp, rs=PublicKey(responder_pub),
                  psks=[bytes(32)])
    buf = bytearray()
    hs.write_message(b"\x01" + tai64n(), buf)
    return send_and_collect(port, frame(bytes(buf)))


def send_and_collect(port, data):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    got = b""
    try:
        s.sendall(data)
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not b:
                break
            got += b
    finally:
        s.close()
    return got


def daemons_test(t, cl, pubs, lines):
    n1 = cl.nodes[0]
    intruders = [Intruder(cl, 1, "mallory", BASE + 5, lines, pubs),
                 Intruder(cl, 2, "node2", BASE + 6, lines, pubs)]
    for x in intruders:
        r = mmtest.run([mmtest.MAILMESH, "check-config", "-c", x.conf])
        t.check(r.returncode == 0, "%s: its config is valid on its own (%s)" % (x.label, r.stderr.strip()))
        x.deliver(USER, SECRET)
    refused0 = [count_in(n.log, "refused") for n in cl.nodes]
    try:
        for x in intruders:
            x.start()
        # Each intruder dials each cluster node (its key sorts lower) and retries with backoff.
        deadline = time.time() + 30 * mmtest.SLOW
        while time.time() < deadline:
            refused = [count_in(n.log, "refused") - r0 for n, r0 in zip(cl.nodes, refused0)]
            if all(r >= 4 for r in refused):
                break
            time.sleep(0.1)
        refused = [count_in(n.log, "refused") - r0 for n, r0 in zip(cl.nodes, refused0)]
        t.check(all(r >= 2 for r in refused), "every cluster node logs its refusals of the intruders %s" % refused)
        unknown = [count_in(n.log, "unknown key") for n in cl.nodes]
        t.check(all(u >= 2 for u in unknown), "the refusals name the reason: unknown key %s" % unknown)
        # Mail delivered while the intruders knock reaches the cluster, not them.
        body = mmtest.message(777001)
        n1.deliver(USER, body)
        ok = cl.wait_converged(timeout=60)
        t.check(ok, "the cluster converges while the intruders knock")
        for x in intruders:
            st = x.status() or {}
            conn = [p["name"] for p in st.get("peers", []) if p.get("connected")]
            t.check(st and not conn, "%s is connected to nobody (%s)" % (x.label, conn))
            c = x.content()
            msgs = [m for v in c.values() for m in v]
            t.check(len(msgs) == 1, "%s: its Maildir holds only its own message (%d)" % (x.label, len(msgs)))
            t.check(st.get("remote_changes", 1) == 0 and all(p.get("records_in", 0) == 0 and p.get("bodies_in", 0) == 0
                                                               for p in st.get("peers", [])),
                    "%s received no record and no body" % x.label)
        secret = hashlib.sha256(SECRET).hexdigest()[:16]
        for n in cl.nodes:
            c = n.content()
            t.check(not any(m[0] == secret for v in c.values() for m in v),
                    "node%d did not get the intruders' message" % n.i)
            st = n.status() or {}
            peers = {p["name"]: p for p in st.get("peers", [])}
            t.check("mallory" not in peers and all(p.get("connected") for p in peers.values()),
                    "node%d lists only cluster peers, all connected" % n.i)
    finally:
        for x in intruders:
            x.stop()


def raw_test(t, cl, pubs):
    n1, n2 = cl.nodes[0], cl.nodes[1]
    n1pub = base64.b64decode(pubs[0])
    dh = X25519DH()
    real = dh.generate_keypair(PrivateKey(read_priv(n2.dir)))
    got = raw_handshake(BASE, n1pub, real)
    t.check(len(got) > 2, "control: node2's real key gets message 2 back from node1 (%d bytes)" % len(got))
    refused0 = count_in(n1.log, "refused")
    fresh = dh.generate_keypair()
    got = raw_handshake(BASE, n1pub, fresh)
    t.check(got == b"", "a fresh key gets not one byte back (%d)" % len(got))
    forged = KeyPair(PublicKey(base64.b64decode(pubs[1])), PrivateKey(os.urandom(32)))
    got = raw_handshake(BASE, n1pub, forged)
    t.check(got == b"", "node2's public key without its private key gets not one byte back (%d)" % len(got))
    got = send_and_collect(BASE, os.urandom(70000))
    t.check(got == b"", "random bytes on TCP get nothing back (%d)" % len(got))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(0.5)
    replies = 0
    try:
        for i in range(200):
            u.sendto(os.urandom(1 + i * 7 % 1400), ("127.0.0.1", BASE))
        while True:
            try:
                u.recvfrom(65536)
                replies += 1
            except socket.timeout:
                break
    finally:
        u.close()
    t.check(replies == 0, "random datagrams get no reply (%d)" % replies)
    deadline = time.time() + 10 * mmtest.SLOW
    while time.time() < deadline and count_in(n1.log, "refused") - refused0 < 1:
        time.sleep(0.05)
    t.check(count_in(n1.log, "refused") - refused0 >= 1, "node1 logs the fresh key's refusal")
    t.check(all(n.proc.poll() is None for n in cl.nodes), "every cluster daemon is still running")
    body = mmtest.message(777002)
    n1.deliver(USER, body)
    t.check(cl.wait_converged(timeout=60), "the cluster still converges afterwards")


def main():
    t = mmtest.Report("it_daemon_intruder")
    mmtest.exit_on_sigterm()
    cl = mmtest.Cluster(3, BASE, name="intruder")
    ok = False
    try:
        with open(os.path.join(cl.dir, "peers")) as f:
            lines = [l for l in f if l.strip() and not l.startswith("#")]
        pubs = [read_pub(n.dir) for n in cl.nodes]
        for i in range(20):
            cl.nodes[i % 3].deliver(USER, mmtest.message(i))
        cl.start()
        if t.check(cl.wait_converged(timeout=60), "the cluster converges"):
            t.run(daemons_test, cl, pubs, lines)
            t.run(raw_test, cl, pubs)
            codes = [n.stop() for n in cl.nodes]
            t.check(codes == [0] * 3, "every daemon stops cleanly on SIGTERM (%s)" % codes)
        ok = True
    except Exception:
        import traceback
        traceback.print_exc()
        t.failed += 1
    finally:
        cl.close(keep_on_failure=(not ok or t.failed) and os.environ.get("KEEP") == "1")
    t.finish()


if __name__ == "__main__":
    main()
