"""it_daemon_halfopen.py — what a remote that is not a peer can make a daemon hold
before it is authenticated.  Real daemons on loopback, ports 22230-22239 (or from
MM_TEST_BASE_PORT).

A 2-node cluster is connected.  Then, against the node the other dials (called the
acceptor below; the dialer is the node whose key sorts lower):
1. 200 TCP connections that never send a byte, and one that sends a frame's first
   length byte and then a byte a second (a slow handshake).  The acceptor must hold at most
   its cap of unauthenticated connections at any time (its open descriptors are
   counted), and close every one of them after its handshake timeout: before, each
   stayed open for ever, so about a thousand of them (the usual descriptor limit of a
   service) left the daemon unable to accept its peers or open a mail file.
2. While the cap is full, the dialer is restarted: it is connected again at once (the
   oldest unauthenticated connection makes room for its new one).
3. The cluster has a psk.  A raw Noise message 1 made with the dialer's real private
   key but without the psk (a stolen node key), sent to the acceptor and held open:
   the acceptor keeps its live connection to the dialer.  Before, an incoming
   connection replaced the peer's at message 1, before anything sealed with the psk
   had come, so such an intruder (or a message 1 replayed after a restart) cut the
   pair's connection.
The cluster still converges afterwards.  Prints `N passed, N failed`."""
import base64
import os
import socket
import struct
import sys
import time

from dissononce.dh.x25519.private import PrivateKey
from dissononce.dh.x25519.public import PublicKey
from dissononce.dh.x25519.x25519 import X25519DH
from dissononce.extras.meta.protocol.factory import NoiseProtocolFactory

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mmtest  # noqa: E402

BASE = int(os.environ.get("MM_TEST_BASE_PORT", "22230"))
USER = "example.org/alice"
PENDING_MAX = 64            # node/peer.c: unauthenticated incoming connections held at once
HANDSHAKE_TIMEOUT_S = 10    # node/peer.c: HANDSHAKE_TIMEOUT_MS


def fds(node):
    try:
        return len(os.listdir("/proc/%d/fd" % node.pid()))
    except (OSError, TypeError):
        return -1


def dial(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(None)  # (a timeout would make every MSG_DONTWAIT recv wait for it)
    return s


def closed_by_peer(s):
    """Whether the other end closed s (EOF or reset), without blocking."""
    try:
        b = s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
        return b == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def connected(node, peer):
    return node.connected(peer)


wait = mmtest.wait_for


def pub(node):
    with open(os.path.join(node.dir, "private.key")) as f:
        return base64.b64decode(mmtest.run([mmtest.MAILMESH, "pubkey"], input=f.read()).stdout.strip())


def hello(responder_pub, priv, ahead=0):
    """A Noise IKpsk2 message 1 as a stream frame (payload version 1 + TAI64N, mailmesh's
    prologue) from static key priv, made with the zero psk; its timestamp `ahead`
    seconds in the future."""
    np = NoiseProtocolFactory().get_noise_protocol("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b")
    hs = np.create_handshakestate()
    kp = X25519DH().generate_keypair(PrivateKey(priv))
    hs.initialize(np.pattern, True, b"mailmesh channel v1", s=kp, rs=PublicKey(responder_pub), psks=[bytes(32)])
    now = time.time() + ahead
    buf = bytearray()
    hs.write_message(b"\x01" + struct.pack(">QI", (1 << 62) + int(now), int((now % 1) * 1e9)), buf)
    return len(buf).to_bytes(2, "big") + bytes(buf)


def peer_field(node, peer, field):
    st = node.status(quiet=True) or {}
    for p in st.get("peers", []):
        if p.get("name") == peer:
            return p.get(field)
    return None


def stolen_key_test(t, cl):
    n1, n2 = cl.nodes[0], cl.nodes[1]
    if pub(n1) < pub(n2):
        n1, n2 = n2, n1
    port = BASE + n1.i - 1
    name2 = "node%d" % n2.i
    with open(os.path.join(n2.dir, "private.key")) as f:
        priv2 = base64.b64decode(f.read().strip())
    t.check(wait(lambda: connected(n1, name2), 10), "the acceptor is connected to the dialer")
    connects = peer_field(n1, name2, "connects")
    replaced = n1.log_text(whole=True).count("replaced by a newer connection")
    s = dial(port)
    try:
        s.sendall(hello(pub(n1), priv2))
        got = b""
        deadline = time.time() + 3 * mmtest.SLOW
        while time.time() < deadline:
            try:
                b = s.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                time.sleep(0.1)
                continue
            except OSError:
                break
            if not b:
                break
            got += b
        t.check(len(got) > 2, "control: message 1 with the dialer's key is answered (%d bytes)" % len(got))
        t.check(connected(n1, name2) and peer_field(n1, name2, "connects") == connects,
                "the acceptor keeps its connection to the dialer while the intruder holds its own open "
                "(connects %s -> %s)" % (connects, peer_field(n1, name2, "connects")))
        t.check(n1.log_text(whole=True).count("replaced by a newer connection") == replaced,
                "the acceptor replaced no connection")
    finally:
        s.close()
    t.check(wait(lambda: connected(n1, name2) and connected(n2, "node%d" % n1.i), 10),
            "the two nodes are still connected")
    # The same stolen key, a message 1 dated a day ahead: taken as the peer's last
    # timestamp at once, it refused every real handshake until the acceptor restarted.
    s = dial(port)
    try:
        s.sendall(hello(pub(n1), priv2, ahead=86400))
        time.sleep(0.5)
    finally:
        s.close()
    t.check(n2.stop() == 0, "the dialer stops")
    n2.start()
    t.check(wait(lambda: connected(n1, name2) and connected(n2, "node%d" % n1.i), 10),
            "after a stolen-key message 1 dated a day ahead, the restarted dialer is connected again")


def halfopen_test(t, cl):
    # n1: the acceptor, attacked; n2: the dialer (its key sorts lower)
    n1, n2 = cl.nodes[0], cl.nodes[1]
    if pub(n1) < pub(n2):
        n1, n2 = n2, n1
    port = BASE + n1.i - 1
    name1, name2 = "node%d" % n1.i, "node%d" % n2.i
    base_fds = fds(n1)
    socks = []
    try:
        for _ in range(200):
            socks.append(dial(port))
        slow = dial(port)
        slow.sendall(b"\x01")
        socks.append(slow)
        time.sleep(1)
        held = fds(n1) - base_fds
        t.check(held <= PENDING_MAX + 2,
                "the acceptor holds at most %d unauthenticated connections (%d more descriptors than before)"
                % (PENDING_MAX, held))
        # the dialer restarts while the cap is full: the oldest waiting connection makes room
        n2.stop()
        t.check(wait(lambda: not connected(n1, name2), 10), "the acceptor sees the dialer gone")
        for _ in range(PENDING_MAX):
            socks.append(dial(port))
        n2.start()
        t.check(wait(lambda: connected(n1, name2) and connected(n2, name1), 5),
                "the dialer is connected again while the unauthenticated connections wait")
        # the slow handshake goes on a byte a second: it must be cut off all the same
        deadline = time.time() + (HANDSHAKE_TIMEOUT_S + 20) * mmtest.SLOW
        while time.time() < deadline and not all(closed_by_peer(s) for s in socks):
            if not closed_by_peer(slow):
                try:
                    slow.send(b"\x00")
                except OSError:
                    pass
            time.sleep(1)
        left = sum(1 for s in socks if not closed_by_peer(s))
        t.check(left == 0, "the acceptor closed every connection that did not complete a handshake (%d of %d left open)"
                % (left, len(socks)))
        t.check(wait(lambda: fds(n1) - base_fds <= 2, 10),
                "the acceptor's descriptors are back to where they were (%d more)" % (fds(n1) - base_fds))
    finally:
        for s in socks:
            s.close()
    t.check(all(n.proc.poll() is None for n in cl.nodes), "both daemons are still running")
    t.check(connected(n1, name2), "the two nodes are still connected")
    n1.deliver(USER, mmtest.message(880001))
    t.check(cl.wait_converged(timeout=60), "the cluster still converges afterwards")


def main():
    t = mmtest.Report("it_daemon_halfopen")
    mmtest.exit_on_sigterm()
    cl = mmtest.Cluster(2, BASE, name="halfopen")
    ok = False
    try:
        psk = os.path.join(cl.dir, "cluster.psk")
        r = mmtest.run([mmtest.MAILMESH, "genkey", "-o", psk])
        if r.returncode != 0:
            raise RuntimeError("genkey: %s" % r.stderr)
        for n in cl.nodes:
            cl.set_conf(n, "cluster_psk", psk)
        cl.nodes[0].deliver(USER, mmtest.message(1))
        cl.start()
        if t.check(wait(lambda: connected(cl.nodes[0], "node2"), 20) and cl.wait_converged(timeout=60),
                   "the cluster connects and converges"):
            t.run(halfopen_test, cl)
            t.run(stolen_key_test, cl)
            codes = [n.stop() for n in cl.nodes]
            t.check(codes == [0] * 2, "both daemons stop cleanly on SIGTERM (%s)" % codes)
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
