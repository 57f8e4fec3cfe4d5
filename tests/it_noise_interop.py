#!/usr/bin/python3
"""it_noise_interop.py -- interoperability of mailmesh's Noise code (proto/noise.c,
driven by build/tests/noise_peer over stdin/stdout) with an independent implementation,
Debian's python3-dissononce: IK and IKpsk2 handshakes and transport messages both ways,
with C as initiator and as responder; the handshake hashes must agree.  Also checks that
failures are seen: a tampered transport message makes the C side fail, and a wrong
responder key makes dissononce refuse C's message 1.  Uses no network port (pipes).
Prints `N passed, N failed`."""
import os
import subprocess
import sys

from dissononce.extras.meta.protocol.factory import NoiseProtocolFactory
from dissononce.dh.x25519.private import PrivateKey
from dissononce.dh.x25519.public import PublicKey
from dissononce.dh.x25519.x25519 import X25519DH

TOP = os.environ.get("MAILMESH_TOP") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUILD", "build")
PEER = os.path.join(BUILD if os.path.isabs(BUILD) else os.path.join(TOP, BUILD), "tests", "noise_peer")

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print("ok   " + name)
    else:
        failed += 1
        print("FAIL " + name + (": " + detail if detail else ""))


def keypair(priv=None):
    priv = priv or os.urandom(32)
    kp = X25519DH().generate_keypair(PrivateKey(priv))
    return priv, kp


def frame(b):
    return len(b).to_bytes(2, "big") + b


def read_frame(f):
    h = f.read(2)
    if len(h) < 2:
        raise EOFError("no frame")
    n = int.from_bytes(h, "big")
    b = f.read(n)
    if len(b) != n:
        raise EOFError("short frame")
    return b


SIZES = [0, 1, 100, 65535 - 16 - 5]  # the largest leaves room for "echo:" in the reply


def session(proto, c_initiator, psk=None, tamper=False, wrong_rs=False):
    """Runs one session; returns (ok, detail)."""
    c_priv, _ = keypair()
    py_priv, py_kp = keypair()
    _, c_kp = keypair(c_priv)
    if wrong_rs:
        _, other = keypair()
    c_e = os.urandom(32)
    args = [PEER, "initiator" if c_initiator else "responder", proto, c_priv.hex(), c_e.hex()]
    if c_initiator:
        args.append((other if wrong_rs else py_kp).public.data.hex())
    else:
        args.append("-")
    args.append(psk.hex() if psk else "-")
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        np = NoiseProtocolFactory().get_noise_protocol(proto)
        hs = np.create_handshakestate()
        rs = None if c_initiator else c_kp.public
        hs.initialize(np.pattern, not c_initiator, b"", s=py_kp, rs=rs, psks=[psk] if psk else None)
        cs = None
        turn_py = not c_initiator
        payloads = []
        while cs is None:
            if turn_py:
                buf = bytearray()
                cs = hs.write_message(b"from python", buf)
                p.stdin.write(frame(bytes(buf)))
                p.stdin.flush()
            else:
                m = read_frame(p.stdout)
                buf = bytearray()
                try:
                    cs = hs.read_message(m, buf)
                except Exception as e:  # dissononce raises on authentication failure
                    p.stdin.close()
                    p.wait(timeout=30)
                    return (wrong_rs, "dissononce refused message: %r" % e)
                payloads.append(bytes(buf))
            turn_py = not turn_py
        if wrong_rs:
            return (False, "handshake completed with a wrong responder key")
        if any(x != b"from C" for x in payloads):
            return (False, "handshake payloads from C: %r" % payloads)
        py_hash = hs.symmetricstate.get_handshake_hash()
        # cs = (initiator->responder, responder->initiator)
        tx, rx = (cs[1], cs[0]) if c_initiator else (cs[0], cs[1])
        for i, size in enumerate(SIZES):
            data = bytes((i * 7 + j) % 251 for j in range(size))
            ct = tx.encrypt_with_ad(b"", data)
            if tamper and i == 2:
                ct = bytearray(ct)
                ct[len(ct) // 2] ^= 0x10
                ct = bytes(ct)
            p.stdin.write(frame(ct))
            p.stdin.flush()
            if tamper and i == 2:
                p.stdin.close()
                rc = p.wait(timeout=30)
                err = p.stderr.read().decode(errors="replace")
                return (rc != 0 and "decrypt" in err, "C exit %d, stderr %r" % (rc, err[-200:]))
            reply = rx.decrypt_with_ad(b"", read_frame(p.stdout))
            if reply != b"echo:" + data:
                return (False, "echo of message %d differs" % i)
        p.stdin.close()
        rc = p.wait(timeout=30)
        err = p.stderr.read().decode(errors="replace")
        if rc != 0:
            return (False, "C exit %d: %s" % (rc, err[-300:]))
        lines = dict(l.split(" ", 1) for l in err.splitlines() if " " in l)
        got = [l.split(" ", 1)[1] for l in err.splitlines() if l.startswith("hs-payload ")]
        if any(bytes.fromhex(x) != b"from python" for x in got) or not got and not c_initiator:
            return (False, "C saw handshake payloads %r" % got)
        if lines.get("hash") != py_hash.hex():
            return (False, "handshake hash differs: C %s python %s" % (lines.get("hash"), py_hash.hex()))
        return (True, "")
    except Exception as e:
        return (False, "exception %r; C stderr %r" % (e, p.stderr.read().decode(errors="replace")[-300:]
                                                      if p.poll() is not None else ""))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for f in (p.stdin, p.stdout, p.stderr):
            try:
                f.close()
            except Exception:
                pass


def main():
    if not os.access(PEER, os.X_OK):
        print("FAIL %s not built" % PEER)
        print("0 passed, 1 failed")
        return 1
    psk = os.urandom(32)
    for proto, k in (("Noise_IK_25519_ChaChaPoly_BLAKE2b", None),
                     ("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2b", psk)):
        for c_init in (True, False):
            ok, why = session(proto, c_init, psk=k)
            check("%s C %s <-> dissononce" % (proto, "initiator" if c_init else "responder"), ok, why)
    ok, why = session("Noise_IK_25519_ChaChaPoly_BLAKE2b", False, tamper=True)
    check("tampered transport message from dissononce refused by C", ok, why)
    ok, why = session("Noise_IK_25519_ChaChaPoly_BLAKE2b", True, wrong_rs=True)
    check("C initiator with a wrong responder key refused by dissononce", ok, why)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
