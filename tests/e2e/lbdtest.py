"""Harness for lbd's end-to-end tests: real lbd, real test backends.

Everything here uses Debian's python3 standard library only.

A test case derives from LbdTestCase. Each test gets its own temp dir
(kept when the test fails and LBD_KEEP=1), its own ports, its own backends
and its own lbd; cleanups stop only the processes the test started, by PID.
Every wait polls a condition against a deadline: no fixed sleeps where a
condition can be polled, and no assertions on how long something took.
"""
import ctypes
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

LBD = os.environ.get("LBD") or os.path.join(ROOT, "build", "lbd")
LBD_BACKEND = os.environ.get("LBD_BACKEND") or os.path.join(ROOT, "build", "lbd-testbackend")
# lbtop: beside the lbd under test unless named.
LBTOP = os.environ.get("LBTOP") or os.path.join(os.path.dirname(LBD), "lbtop")
# More builds of the tree for the upgrade tests (GNUmakefile): version
# 0.2.0+b, one whose workers exit as they start, one of another shm layout. run.py swaps in
# private copies: read them as lbdtest.LBD_B at run time.
LBD_B = os.environ.get("LBD_B") or os.path.join(os.path.dirname(LBD), "lbd-b")
LBD_CRASH = os.environ.get("LBD_CRASH") or os.path.join(os.path.dirname(LBD), "lbd-crash")
LBD_LAYOUT = os.environ.get("LBD_LAYOUT") or os.path.join(os.path.dirname(LBD), "lbd-layout")

# Temp dirs of failed tests kept because LBD_KEEP=1 (run.py prints them).
KEPT_DIRS = []

# The body of ?size=N is this 64-byte line repeated.
PATTERN_LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n"
assert len(PATTERN_LINE) == 64


def pattern_body(n):
    reps = n // 64 + 1
    return (PATTERN_LINE * reps)[:n]


# ---------------------------------------------------------------------------
# small utilities

class Timeout(AssertionError):
    pass


CLONE_NEWNET = 0x40000000      # <sched.h>


def wait_for(cond, timeout=10.0, interval=0.02, what="condition"):
    """Poll COND until it returns a true value; return that value.
    Raises Timeout (an AssertionError) after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = cond()
            if v:
                return v
            last_exc = None
        except Exception as e:  # a probe that fails is just "not yet"
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise Timeout(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        time.sleep(interval)


_libc = None


def _set_pdeathsig():
    """preexec_fn: if the runner dies, its children get SIGTERM (no leaks)."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(1, signal.SIGTERM, 0, 0, 0)     # PR_SET_PDEATHSIG
    except Exception:
        pass


_ports_lock = threading.Lock()
_ports_used = set()


def _port_free(port):
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    if ipv6_loopback_available():
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(("::1", port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_port():
    """A port nobody listens on, below the ephemeral range (so outgoing
    connections do not grab it between the probe and its use), and never
    handed out twice by this process."""
    with _ports_lock:
        for _ in range(2000):
            port = random.randrange(20000, 32000)
            if port in _ports_used:
                continue
            if _port_free(port):
                _ports_used.add(port)
                return port
    raise RuntimeError("no free port found")


_ipv6 = None


def ipv6_loopback_available():
    global _ipv6
    if _ipv6 is None:
        try:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                s.bind(("::1", 0))
                _ipv6 = True
            finally:
                s.close()
        except OSError:
            _ipv6 = False
    return _ipv6


def split_hostport(addr):
    """'127.0.0.1:80' or '[::1]:80' -> (host, port)."""
    if addr.startswith("["):
        host, _, port = addr[1:].partition("]:")
    else:
        host, _, port = addr.rpartition(":")
    return host, int(port)


def connect(addr, timeout=10.0, source=None):
    """A TCP connection to ADDR; SOURCE: local address to bind first
    (say "127.0.0.2", to connect from another loopback address)."""
    host, port = split_hostport(addr)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if source is not None:
            s.bind((source, 0))
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def sanitized(path):
    """True if the binary at PATH is built with AddressSanitizer (its RSS is
    then dominated by shadow memory and the quarantine, not by lbd)."""
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def proc_cmdline(pid):
    """The NUL-separated argv of PID as a list (process titles included)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0")]


def vm_rss_kib(pid):
    """Resident memory of PID in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return 0


def proc_title(pid):
    args = proc_cmdline(pid)
    return args[0] if args else None


def proc_children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


# ---------------------------------------------------------------------------
# HTTP client over a raw socket: full control of bytes and of the connection
# (http.client reconnects silently, which hides what a test wants to see).

class Response:
    def __init__(self, status, reason, headers, body, raw_head):
        self.status = status
        self.reason = reason
        self.headers = headers          # list of (name, value)
        self.body = body
        self.raw_head = raw_head

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def backend(self):
        return self.header("X-Backend")

    def __repr__(self):
        return f"<Response {self.status} {self.reason} backend={self.backend} body={len(self.body)}B>"


class ConnectionClosed(Exception):
    pass


class HttpConn:
    """One client TCP connection; requests and responses in order."""

    def __init__(self, addr, timeout=10.0, source=None):
        self.addr = addr
        self.sock = connect(addr, timeout, source=source)
        self.buf = bytearray()
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def local_port(self):
        return self.sock.getsockname()[1]

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        if self.eof:
            return False
        chunk = self.sock.recv(262144)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _read_until(self, sep, limit=1 << 20):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ValueError("line too long")
            if not self._fill():
                raise ConnectionClosed(f"connection closed (had {len(self.buf)} bytes)")

    def _read_exact(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionClosed(f"connection closed with {n - len(self.buf)} bytes missing")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_until_eof(self):
        while self._fill():
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_response(self, head_request=False):
        """Read one response (interim 1xx responses are skipped)."""
        while True:
            head = self._read_until(b"\r\n\r\n")
            lines = head[:-4].split(b"\r\n")
            m = re.match(rb"HTTP/1\.[01] (\d{3})(?: (.*))?$", lines[0])
            if not m:
                raise ValueError(f"bad status line {lines[0]!r}")
            status = int(m.group(1))
            reason = (m.group(2) or b"").decode("latin-1")
            headers = []
            for ln in lines[1:]:
                k, _, v = ln.partition(b":")
                headers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
            resp = Response(status, reason, headers, b"", head)
            if 100 <= status < 200:
                continue
            break
        te = (resp.header("Transfer-Encoding") or "").lower()
        cl = resp.header("Content-Length")
        if head_request or status in (204, 304):
            body = b""
        elif "chunked" in te:
            parts = []
            while True:
                size_line = self._read_until(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self._read_until(b"\r\n") != b"\r\n":
                        pass
                    break
                parts.append(self._read_exact(size))
                if self._read_exact(2) != b"\r\n":
                    raise ValueError("bad chunk terminator")
            body = b"".join(parts)
        elif cl is not None:
            body = self._read_exact(int(cl))
        else:
            body = self.read_until_eof()
        resp.body = body
        return resp

    def request(self, target="/", host="lbd.test", method="GET", headers=(), body=None,
                version="1.1"):
        lines = [f"{method} {target} HTTP/{version}", f"Host: {host}"]
        for k, v in headers:
            lines.append(f"{k}: {v}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if body:
            data += body
        self.send(data)
        return self.read_response(head_request=(method == "HEAD"))


def http_get(addr, target="/", host="lbd.test", headers=(), timeout=10.0, method="GET", body=None):
    """One request on a fresh connection (closed afterwards)."""
    with HttpConn(addr, timeout) as c:
        return c.request(target, host=host, headers=headers, method=method, body=body)


def recv_until_eof(sock):
    """Everything SOCK receives until the peer closes."""
    got = b""
    while True:
        d = sock.recv(65536)
        if not d:
            return got
        got += d


def raw_exchange(addr, data, timeout=10.0, shut_write=False):
    """Send DATA on a fresh connection and read until the server closes.
    Returns the bytes received."""
    with HttpConn(addr, timeout) as c:
        c.send(data)
        if shut_write:
            c.sock.shutdown(socket.SHUT_WR)
        return c.read_until_eof()


def parse_status(raw):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# processes

class Backend:
    def __init__(self, tc, name, port=None, host="127.0.0.1"):
        self.name = name
        self.port = port or free_port()
        self.addr = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.log_path = os.path.join(tc.tmp, f"backend-{name}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [tc.backend_bin, "-l", self.addr, "-n", name],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL,
            preexec_fn=_set_pdeathsig)
        self.pid = self.proc.pid
        line = self._readline_with_timeout(10)
        if line.strip() != b"ready":
            self.stop()
            raise AssertionError(f"backend {name} did not become ready: {line!r}; "
                                 f"log: {self.log_tail()}")

    def _readline_with_timeout(self, timeout):
        out = []
        t = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return out[0] if out else b""

    def log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stats(self):
        """The backend's own counters (GET /stats, direct). The /stats
        request itself counts as one request."""
        r = http_get(self.addr, "/stats")
        return json.loads(r.body)

    def control(self, query=""):
        """GET /control?QUERY (direct): every later request but /stats and
        /control behaves as if its query held QUERY ("status=503",
        "reset=1", "delay=500", "retry_after=2"); "" restores normal answers."""
        r = http_get(self.addr, "/control" + ("?" + query if query else ""))
        if r.status != 200:
            raise AssertionError(f"GET /control?{query} on {self.name}: {r!r}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


class RawServer:
    """A hand-made backend on a free loopback port: a thread per connection
    runs the subclass's _serve(conn). For behaviour tests/backend cannot
    show (answers cut short, closes at a chosen moment)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.listen(64)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def read_head(c, buf):
        """Read from C until BUF holds a whole head: (head, rest), or None
        when the peer closed first."""
        while b"\r\n\r\n" not in buf:
            try:
                d = c.recv(65536)
            except OSError:
                return None
            if not d:
                return None
            buf += d
        head, rest = buf.split(b"\r\n\r\n", 1)
        return head, rest

    def stop(self):
        self.stopped = True
        self.sock.close()


class Lbd:
    """A running lbd master started by a test."""

    def __init__(self, tc, config_path, listen, args=(), workers=None, wait=True, nofile=None):
        self.tc = tc
        self.config_path = config_path
        self.listen = listen                # the address tests connect to
        self.log_path = os.path.join(tc.tmp, "lbd.stderr.log")
        self._log = open(self.log_path, "ab")
        def preexec():
            _set_pdeathsig()
            if nofile is not None:      # (soft, hard), as `prlimit --nofile=S:H`
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
        self.proc = subprocess.Popen(
            [tc.lbd_bin, "-c", config_path] + list(args),
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL,
            preexec_fn=preexec)
        self.pid = self.proc.pid
        self.seen_workers = set()           # every child pid observed (for cleanup)
        self.exit_checked = False
        self.log_paths = {self.log_path}    # stderr, plus every error_log it was given
        self._note_error_log()
        if wait:
            self.wait_ready(workers)

    def _note_error_log(self):
        try:
            with open(self.config_path) as f:
                text = f.read()
        except OSError:
            return
        for m in re.finditer(r'^\s*error_log\s*=\s*"([^"]*)"', text, re.M):
            path = m.group(1)
            if not os.path.isabs(path):
                path = os.path.join(os.path.dirname(self.config_path), path)
            self.log_paths.add(path)

    # Log lines that mean something went wrong even if every assertion held.
    SANITIZER_RX = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:")
    RESPAWN_RX = re.compile(r"respawning")

    def log_problems(self, allow_respawns=False):
        """Lines of every log this lbd wrote (stderr, where sanitizers
        report, and its error_log files) that show a sanitizer report or,
        unless ALLOW_RESPAWNS, a worker (or helper process) that died and
        was respawned."""
        out = []
        for path in sorted(self.log_paths):
            try:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            lines = text.splitlines()
            for i, ln in enumerate(lines):
                if self.SANITIZER_RX.search(ln):
                    # The report's first frames say where.
                    ctx = "\n      ".join(lines[i + 1:i + 12])
                    out.append(f"{os.path.basename(path)}: {ln}\n      {ctx}")
                elif not allow_respawns and self.RESPAWN_RX.search(ln):
                    out.append(f"{os.path.basename(path)}: {ln}")
        return out

    # -- status -----------------------------------------------------------

    def alive(self):
        return self.proc.poll() is None

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, offset):
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def wait_log(self, regex, since=0, timeout=10.0):
        rx = re.compile(regex)

        def probe():
            m = rx.search(self.log_since(since))
            return m
        return wait_for(probe, timeout, what=f"log line /{regex}/ in {self.log_path}")

    def snapshot(self):
        r = subprocess.run([self.tc.lbd_bin, "-s", "-c", self.config_path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=15)
        if r.returncode != 0:
            raise AssertionError(f"lbd -s failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
        snap = json.loads(r.stdout)
        for w in snap.get("workers", []):
            if w.get("pid"):
                self.seen_workers.add(w["pid"])
        return snap

    def worker_pids(self):
        """{worker id: pid} of the master's children titled 'lbd: worker N'
        (during a reload both generations show up: the newest pid wins)."""
        out = {}
        for pid in proc_children(self.pid):
            title = proc_title(pid) or ""
            if title.startswith("lbd:"):
                self.seen_workers.add(pid)      # workers and any helper process
            m = re.match(r"lbd: worker (\d+)$", title)
            if m:
                out.setdefault(int(m.group(1)), []).append(pid)
        return {k: max(v) for k, v in out.items()}

    def wait_in_flight(self, n, what="the request to be in flight"):
        """Wait until N requests are in flight to the backends."""
        wait_for(lambda: sum(s["active"] for p in self.snapshot()["pools"]
                             for s in p["servers"]) == n, 10, what=what)

    def running_workers(self, snap=None):
        snap = snap or self.snapshot()
        return [w for w in snap["workers"] if w["state"] == "running"]

    def wait_ready(self, workers=None, timeout=15.0):
        """Listener accepts, `lbd -s` works, and WORKERS workers run."""
        def probe():
            if not self.alive():
                raise AssertionError(f"lbd exited early with {self.proc.returncode}:\n{self.log()}")
            s = connect(self.listen, timeout=2)
            s.close()
            snap = self.snapshot()
            ws = [w for w in snap["workers"] if w["state"] == "running" and w["pid"] > 0]
            if workers is not None and len(ws) != workers:
                return False
            if not ws:
                return False
            # Titled children exist (forked and past lb_proctitle_set).
            return all((proc_title(w["pid"]) or "").startswith("lbd: worker") for w in ws)
        try:
            wait_for(probe, timeout, what="lbd to be ready")
        except Timeout:
            if not self.alive():
                raise AssertionError(f"lbd exited with {self.proc.returncode}:\n{self.log()}")
            raise
        self.worker_pids()      # remember every child, for the cleanup

    # -- control ----------------------------------------------------------

    def signal(self, sig):
        os.kill(self.pid, sig)

    def reload(self, config_text=None, expect_ok=True, timeout=15.0):
        """Rewrite the config (atomically) if given, SIGHUP, and wait until
        the generation increments (expect_ok) or reload_failures does."""
        before = self.snapshot()
        if config_text is not None:
            self.tc.write_file(self.config_path, config_text)
            self._note_error_log()
        self.signal(signal.SIGHUP)

        def probe():
            s = self.snapshot()
            if s["generation"] > before["generation"]:
                return ("ok", s)
            if s["reload_failures"] > before["reload_failures"]:
                return ("failed", s)
            return None
        outcome, snap = wait_for(probe, timeout, what="the reload to finish")
        if expect_ok and outcome != "ok":
            raise AssertionError(f"reload failed unexpectedly; log:\n{self.log()[-3000:]}")
        if not expect_ok and outcome != "failed":
            raise AssertionError("reload of a broken config succeeded")
        return before, snap

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, check=True):
        """Graceful stop (SIGTERM); assert a clean exit when CHECK.
        Anything of ours still alive afterwards is killed by PID."""
        problems = []
        try:
            self.snapshot()     # learn the current worker pids
        except Exception:
            pass
        self.worker_pids()
        if self.alive():
            self.signal(signal.SIGTERM)
            rc = self.wait_exit(20)
            if rc is None:
                problems.append("lbd did not exit within 20s of SIGTERM")
                self.proc.kill()
                self.proc.wait(5)
            elif rc != 0:
                problems.append(f"lbd exited with {rc} after SIGTERM")
        elif self.proc.returncode != 0:
            problems.append(f"lbd had exited by itself with {self.proc.returncode}")
        # Children exit with the master (it waits for its workers; others
        # follow through PR_SET_PDEATHSIG): give them a moment, then kill.
        ours = [p for p in self.seen_workers if (proc_title(p) or "").startswith("lbd:")]
        try:
            wait_for(lambda: not any(pid_alive(p) for p in ours), 5, what="lbd's children to exit")
        except Timeout:
            pass
        for pid in sorted(ours):
            if pid_alive(pid) and (proc_title(pid) or "").startswith("lbd:"):
                problems.append(f"{proc_title(pid)} (pid {pid}) outlived the master")
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self._log.close()
        if problems and check and not self.exit_checked:
            raise AssertionError("; ".join(problems) + f"\nlog tail:\n{self.log()[-3000:]}")


# ---------------------------------------------------------------------------
# configuration

def _cfg_value(v):
    """A Python value as libconfig: bool, int, float, dict (group), list
    (array) or string."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, dict):
        return "{ " + " ".join(f"{k} = {_cfg_value(x)};" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[ " + ", ".join(_cfg_value(x) for x in v) + " ]"
    return '"' + str(v) + '"'


def lbd_config(listen, pools, routes=None, workers=2, shutdown_timeout="10s",
               log_level="info", timeouts=None, extra="", admin=None, listener=None):
    """Render a config. LISTEN: address or list. POOLS: list of dicts
    {name, servers: [(address, weight)]} and optionally strategy, keepalive,
    timeouts {kind: "1s"}, hash_key, health_check {...}, passive_health {...},
    circuit_breaker {...}, queue {...}, slow_start, retries {...}. A server
    may be (address, weight, {key: value}) for more keys (max_requests).
    ROUTES: list of (host, path_prefix, pool); default one '*' route to the
    first pool. ADMIN: admin listener address or None. LISTENER: extra keys
    of every listener, e.g. {"defer_accept": False}. Listeners get
    steering = "kernel" unless LISTENER says otherwise: every test client
    comes from 127.0.0.1, which client_ip steering (lbd's default, see
    test_steering.py) would send to one worker only."""
    if isinstance(listen, str):
        listen = [listen]
    t = {"connect": "2s", "backend_response": "5s", "client_header": "5s",
         "client_idle": "10s"}
    t.update(timeouts or {})
    lines = []
    if workers is not None:
        lines.append(f"workers = {workers};")
    lines.append(f'shutdown_timeout = "{shutdown_timeout}";')
    lines.append(f'log_level = "{log_level}";')
    lines.append("timeouts = " + _cfg_value(t) + ";")
    lines.append("listeners = (")
    listener = dict(listener or {})
    listener.setdefault("steering", "kernel")
    more = "".join(f" {k} = {_cfg_value(v)};" for k, v in listener.items())
    lines.append(",\n".join(f'    {{ address = "{a}";{more} }}' for a in listen))
    lines.append(");")
    lines.append("pools = (")
    ps = []
    for p in pools:
        keys = [f'name = "{p["name"]}";', f'strategy = "{p.get("strategy", "round_robin")}";']
        for k in ("keepalive", "timeouts", "hash_key", "health_check", "passive_health",
                  "circuit_breaker", "queue", "slow_start", "retries", "sticky", "tls",
                  "discovery", "max_servers"):
            if p.get(k) is not None:
                keys.append(f"{k} = {_cfg_value(p[k])};")

        def server(a, w, more=None):
            extra = "".join(f" {k} = {_cfg_value(v)};" for k, v in (more or {}).items())
            return f'            {{ address = "{a}"; weight = {w};{extra} }}'
        srv = ",\n".join(server(*s) for s in p.get("servers", ()))
        if srv:
            keys.append(f"servers = (\n{srv}\n        );")
        ps.append("    { " + "\n      ".join(keys) + " }")
    lines.append(",\n".join(ps))
    lines.append(");")
    if routes is None:
        routes = [("*", "/", pools[0]["name"])]
    lines.append("routes = (")
    lines.append(",\n".join(f'    {{ host = "{h}"; path_prefix = "{pp}"; pool = "{pool}"; }}'
                            for h, pp, pool in routes))
    lines.append(");")
    if admin:
        lines.append(f'admin = {{ address = "{admin}"; }};')
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# the base test case

class LbdTestCase(unittest.TestCase):
    lbd_bin = LBD
    backend_bin = LBD_BACKEND
    lbtop_bin = LBTOP
    maxDiff = None
    # At teardown every test fails if lbd's logs show a sanitizer report
    # (AddressSanitizer, LeakSanitizer, UBSan's "runtime error:"; `make asan`)
    # or a respawn ("respawning": a worker died). A test that kills workers
    # on purpose opts out of the latter: call self.expect_worker_deaths(), or
    # set allow_worker_deaths = True on its class.
    allow_worker_deaths = False

    def expect_worker_deaths(self):
        """This test kills lbd's workers (or helper processes) on purpose:
        "respawning" in the log is no failure (sanitizer reports still are)."""
        self.allow_worker_deaths = True

    def setUp(self):
        for b in (self.lbd_bin, self.backend_bin):
            if not os.access(b, os.X_OK):
                self.fail(f"{b} is not an executable: run `make` first")
        self.tmp = tempfile.mkdtemp(prefix=f"lbd-e2e-{self._testMethodName}-")
        self.lbd = None
        self.backends = []
        self._lbds = []
        self._netns_back = None
        # Cleanups run in reverse: backends stop after lbd, and the test
        # leaves its network namespace (enter_private_netns) last.
        self.addCleanup(self._leave_netns)
        self.addCleanup(self._stop_backends)
        self.addCleanup(self._stop_lbds)

    # Keep or delete the temp dir once the outcome is known.
    def run(self, result=None):
        if result is None:
            return super().run(result)
        before = len(result.failures) + len(result.errors)
        try:
            return super().run(result)
        finally:
            tmp = getattr(self, "tmp", None)
            if tmp and os.path.isdir(tmp):
                failed = len(result.failures) + len(result.errors) > before
                if failed and os.environ.get("LBD_KEEP") == "1":
                    KEPT_DIRS.append((self.id(), tmp))
                    print(f"\n    [kept temp dir of {self.id()}: {tmp}]", flush=True)
                else:
                    shutil.rmtree(tmp, ignore_errors=True)

    def _stop_lbds(self):
        errors = []
        for l in reversed(self._lbds):
            try:
                l.stop()
            except AssertionError as e:
                errors.append(str(e))
        # After the stop: sanitizers report leaks as processes exit.
        seen = set()
        for l in self._lbds:
            bad = [ln for ln in l.log_problems(self.allow_worker_deaths) if ln not in seen]
            seen.update(bad)
            if bad:
                errors.append("lbd's log shows a sanitizer report or an unexpected worker "
                              "death (respawning):\n  " + "\n  ".join(bad[:40]))
        if errors:
            raise AssertionError("teardown: " + "\n".join(errors))

    def _stop_backends(self):
        for b in self.backends:
            b.stop()

    def enter_private_netns(self):
        """The rest of this test runs in a network namespace of its own:
        this thread and what it starts (lbd, backends, client threads) get
        a loopback, net.* sysctls and abstract unix sockets no other test
        run on the machine shares. Call before starting anything. Skips
        where the namespace cannot be made (fails with LBD_REQUIRE_BPF=1)."""
        libc = ctypes.CDLL(None, use_errno=True)
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            os.close(back)
            self.require_capability(f"no network namespace of our own (unshare: "
                                    f"{os.strerror(err)})")
        self._netns_back = back
        try:
            r = subprocess.run(["ip", "link", "set", "lo", "up"], stderr=subprocess.PIPE,
                               timeout=10)
            why = r.stderr.decode(errors="replace").strip() if r.returncode else None
        except OSError as e:
            why = repr(e)
        if why is not None:
            self.require_capability(f"cannot bring up lo in a new network namespace: {why}")

    def _leave_netns(self):
        if self._netns_back is None:
            return
        fd, self._netns_back = self._netns_back, None
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.setns(fd, CLONE_NEWNET)
        err = ctypes.get_errno()
        os.close(fd)
        if rc != 0:
            raise OSError(err, f"cannot go back to the test run's network namespace: "
                               f"{os.strerror(err)}")

    # -- helpers ------------------------------------------------------------

    def require_capability(self, missing):
        """The kernel or our privileges lack what this test needs (MISSING
        says what): skip, or fail when LBD_REQUIRE_BPF=1 (as .ci/run sets),
        where the machine is known to have it."""
        if os.environ.get("LBD_REQUIRE_BPF") == "1":
            self.fail(f"{missing} (LBD_REQUIRE_BPF=1)")
        self.skipTest(missing)

    def write_file(self, path, text):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return path

    def path(self, name):
        return os.path.join(self.tmp, name)

    def start_backend(self, name, host="127.0.0.1"):
        b = Backend(self, name, host=host)
        self.backends.append(b)
        return b

    def start_backends(self, *names):
        return [self.start_backend(n) for n in names]

    def start_lbd(self, config_text, listen, args=(), workers=None, name="lbd.conf", wait=True,
                  nofile=None):
        """NOFILE: (soft, hard) RLIMIT_NOFILE to start lbd under."""
        path = self.write_file(self.path(name), config_text)
        l = Lbd(self, path, listen, args=args, workers=workers, wait=wait, nofile=nofile)
        self._lbds.append(l)
        if self.lbd is None:
            self.lbd = l
        return l

    def simple_lbd(self, backends, strategy="round_robin", weights=None, workers=2, **kw):
        """lbd on a fresh port with one pool 'web' over BACKENDS."""
        port = free_port()
        listen = f"127.0.0.1:{port}"
        weights = weights or [1] * len(backends)
        cfg = lbd_config(listen, [{"name": "web", "strategy": strategy,
                                   "servers": list(zip([b.addr for b in backends], weights))}],
                         workers=workers, **kw)
        return self.start_lbd(cfg, listen, workers=workers)

    def get(self, target="/", host="lbd.test", lbd=None, **kw):
        lbd = lbd or self.lbd
        return http_get(lbd.listen, target, host=host, **kw)

    def assertServes(self, lbd=None, host="lbd.test", target="/", backend=None):
        r = self.get(target, host=host, lbd=lbd)
        self.assertEqual(r.status, 200, f"expected 200, got {r!r}")
        if backend is not None:
            self.assertEqual(r.backend, backend)
        return r
