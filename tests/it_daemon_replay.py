"""it_daemon_replay.py — a recorded handshake message 1 replayed after the responder
restarts, and what keeping its timestamp must not do.  Real daemons on loopback,
ports 22250-22259 (or from MM_TEST_BASE_PORT).

The acceptor (the node the other dials) keeps the newest confirmed handshake
timestamp of each peer in its state database (docs/protocol.md, "Handshake"):
1. A message 1 made with the dialer's key before the dialer's own handshake (as if
   recorded off the wire) is refused by the running acceptor, nothing sent back.
2. Both nodes stopped, the acceptor started alone: the same message 1 is still refused,
   nothing sent back.  Before, the acceptor forgot the timestamps at a restart and
   answered it with its message 2 (two more X25519 and a connection held until its
   handshake deadline), refusing it only at confirmation.
3. The dialer started again: connected (the kept timestamp does not refuse it).
4. A handshake made with the dialer's key, dated a day ahead and confirmed (a stolen
   key and psk, or a peer whose clock ran ahead and was set back): the acceptor then
   refuses the real dialer until it restarts, as before; restarted, it does not keep a
   timestamp that far ahead of its own clock (more than max_skew), says so, and the
   dialer is connected again.  Kept, it would have locked the dialer out for a day.
Prints `N passed, N failed`."""
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

BASE = int(os.environ.get("MM_TEST_BASE_PORT", "22250"))
USER = "example.org/alice"
REFUSED = "replayed or old handshake refused"
wait = mmtest.wait_for


def frame(b):
    return len(b).to_bytes(2, "big") + bytes(b)


def handshake_state(responder_pub, priv):
    np = NoiseProtocolFactory().get_noise_protocol("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b")
    hs = np.create_handshakestate()
    kp = X25519DH().generate_keypair(PrivateKey(priv))
    hs.initialize(np.pattern, True, b"mailmesh channel v1", s=kp, rs=PublicKey(responder_pub), psks=[bytes(32)])
    return hs


def hello(hs, ahead=0.0):
    """Message 1 (payload version 1 + TAI64N, dated `ahead` seconds from now) as a frame."""
    now = time.time() + ahead
    buf = bytearray()
    hs.write_message(b"\x01" + struct.pack(">QI", (1 << 62) + int(now), int((now % 1) * 1e9)), buf)
    return frame(buf)


def send_and_collect(port, data, secs=3):
    """Sends data; returns what the node sends back before it closes (or secs pass)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    got = b""
    try:
        s.sendall(data)
        s.settimeout(secs * mmtest.SLOW)
        while True:
            try:
                b = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not b:
                break
            got += b
    finally:
        s.close()
    return got


def confirmed_ahead(port, responder_pub, priv, ahead):
    """A whole handshake dated `ahead` seconds ahead, confirmed by a REKEY frame (what
    the daemon's dialer sends, mm_ch_rekey); held open a moment so it is attached."""
    hs = handshake_state(responder_pub, priv)
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(hello(hs, ahead))
        hdr = b""
        while len(hdr) < 2:
            b = s.recv(2 - len(hdr))
            if not b:
                return False
            hdr += b
        n = int.from_bytes(hdr, "big")
        msg = b""
        while len(msg) < n:
            b = s.recv(n - len(msg))
            if not b:
                return False
            msg += b
        payload = bytearray()
        cs = hs.read_message(msg, payload)
        if not cs or payload[:1] != b"\x01":
            return False
        s.sendall(frame(cs[0].encrypt_with_ad(b"", b"\x04")))  # REKEY
        time.sleep(1)
        return True
    finally:
        s.close()


def read_key(node):
    with open(os.path.join(node.dir, "private.key")) as f:
        return base64.b64decode(f.read().strip())


def replay_test(t, cl):
    n1, n2 = cl.nodes[0], cl.nodes[1]
    if n1.public_key() < n2.public_key():
        n1, n2 = n2, n1  # n1: the acceptor; n2 dials it
    port = BASE + n1.i - 1
    name1, name2 = "node%d" % n1.i, "node%d" % n2.i
    pub1, priv2 = n1.public_key(), read_key(n2)
    recorded = hello(handshake_state(pub1, priv2), ahead=-1)  # older than the dialer's
    time.sleep(0.05)
    cl.start()
    t.check(wait(lambda: n1.connected(name2) and n2.connected(name1), 20), "the two nodes connect")

    refused = n1.log_text(whole=True).count(REFUSED)
    got = send_and_collect(port, recorded)
    t.check(got == b"" and wait(lambda: n1.log_text(whole=True).count(REFUSED) > refused, 5),
            "the running acceptor refuses the recorded message 1, nothing sent (%d bytes)" % len(got))

    t.check(n2.stop() == 0 and n1.stop() == 0, "both nodes stop")
    n1.start()
    refused = n1.log_text(whole=True).count(REFUSED)
    got = send_and_collect(port, recorded)
    t.check(got == b"" and wait(lambda: n1.log_text(whole=True).count(REFUSED) > refused, 5),
            "after a restart the acceptor still refuses it, nothing sent (%d bytes; an answer "
            "is its message 2)" % len(got))
    n2.start()
    t.check(wait(lambda: n1.connected(name2) and n2.connected(name1), 20),
            "the dialer, started again, is connected: its new timestamp is newer than the kept one")

    t.check(confirmed_ahead(port, pub1, priv2, 86400), "a handshake dated a day ahead is answered and confirmed")
    t.check(n2.stop() == 0, "the dialer stops")
    refused = n1.log_text(whole=True).count(REFUSED)
    n2.start()
    t.check(wait(lambda: n1.log_text(whole=True).count(REFUSED) > refused, 20),
            "until the acceptor restarts, it refuses the real dialer (its timestamp is older)")
    t.check(n1.stop() == 0, "the acceptor stops")
    n1.start()
    t.check(wait(lambda: n1.connected(name2) and n2.connected(name1), 20),
            "restarted, the acceptor drops the timestamp a day ahead and the dialer is connected again")
    t.check("ahead of this node's clock, more than max_skew: not kept" in n1.log_text(whole=True),
            "the acceptor says why it dropped it")
    n2.deliver(USER, mmtest.message(1))
    t.check(cl.wait_converged(timeout=60), "the cluster converges")
    codes = [n.stop() for n in cl.nodes]
    t.check(codes == [0, 0], "both daemons stop cleanly (%s)" % codes)


def main():
    t = mmtest.Report("it_daemon_replay")
    mmtest.exit_on_sigterm()
    cl = mmtest.Cluster(2, BASE, name="replay")
    ok = False
    try:
        t.run(replay_test, cl)
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
