"""A minimal ZooKeeper client for the tests (Python standard library only):
one session over ZooKeeper's own wire protocol (jute), kept alive by a
pinging thread; create (ephemeral or not), delete, set. Enough to drive
lbd's ZooKeeper discovery against a real server; not a general client."""
import socket
import struct
import threading
import time

OPEN_ACL = struct.pack(">i", 1) + struct.pack(">i", 31) + \
    struct.pack(">i", 5) + b"world" + struct.pack(">i", 6) + b"anyone"

CREATE, DELETE, SETDATA, PING, CLOSE = 1, 2, 5, 11, -11
EPHEMERAL = 1


def _str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">i", len(b)) + b


class ZkError(Exception):
    pass


class ZkClient:
    def __init__(self, addr, timeout_ms=4000):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.lock = threading.Lock()
        self.xid = 0
        req = struct.pack(">iqiq", 0, 0, timeout_ms, 0) + _str(b"\0" * 16) + b"\0"
        self._send(req)
        resp = self._recv()
        _, self.timeout_ms, self.session = struct.unpack(">iiq", resp[:16])
        if self.timeout_ms <= 0:
            raise ZkError("session refused")
        self.stop_ev = threading.Event()
        self.pinger = threading.Thread(target=self._ping, daemon=True)
        self.pinger.start()

    def _send(self, payload):
        self.sock.sendall(struct.pack(">i", len(payload)) + payload)

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ZkError("connection closed")
            buf += chunk
        return buf

    def _recv(self):
        (n,) = struct.unpack(">i", self._recv_exact(4))
        return self._recv_exact(n)

    def _call(self, op, body, xid=None):
        with self.lock:
            if xid is None:
                self.xid += 1
                xid = self.xid
            self._send(struct.pack(">ii", xid, op) + body)
            while True:
                resp = self._recv()
                rxid, _zxid, err = struct.unpack(">iqi", resp[:16])
                if rxid == -1:
                    continue            # a watch event: we set none
                if rxid != xid:
                    continue
                if err != 0:
                    raise ZkError(f"error {err}")
                return resp[16:]

    def _ping(self):
        while not self.stop_ev.wait(self.timeout_ms / 3000.0):
            try:
                self._call(PING, b"", xid=-2)
            except (OSError, ZkError):
                return

    def create(self, path, data=b"", ephemeral=False):
        data = data.encode() if isinstance(data, str) else data
        self._call(CREATE, _str(path) + _str(data) + OPEN_ACL +
                   struct.pack(">i", EPHEMERAL if ephemeral else 0))

    def ensure(self, path):
        """Create PATH and its parents (persistent), those missing."""
        cur = ""
        for part in path.strip("/").split("/"):
            cur += "/" + part
            try:
                self.create(cur)
            except ZkError as e:
                if "-110" not in str(e):   # ZNODEEXISTS
                    raise

    def delete(self, path):
        self._call(DELETE, _str(path) + struct.pack(">i", -1))

    def set(self, path, data):
        data = data.encode() if isinstance(data, str) else data
        self._call(SETDATA, _str(path) + _str(data) + struct.pack(">i", -1))

    def close(self):
        self.stop_ev.set()
        try:
            self._call(CLOSE, b"")
        except (OSError, ZkError):
            pass
        self.sock.close()
