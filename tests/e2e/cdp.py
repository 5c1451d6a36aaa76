"""A minimal Chrome DevTools Protocol client for the dashboard tests.

Headless Chromium started with --remote-debugging-pipe reads commands on its
fd 3 and writes answers and events on its fd 4, each a JSON text ended by a
NUL byte: no websocket, no port. One page target is created and attached in
flat mode; commands for it carry its sessionId. Python standard library only.
"""
import base64
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


class CdpError(AssertionError):
    pass


class Browser:
    """Headless Chromium with one page. Events are kept in self.events (a
    list of (method, params)); console errors and exceptions are gathered in
    self.errors."""

    def __init__(self, profile_dir, width=1360, height=900):
        cmd_r, self._cmd_w = self._high_pipe()  # we write commands, it reads fd 3
        self._out_r, out_w = self._high_pipe()  # it writes fd 4, we read
        args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--remote-debugging-pipe", f"--user-data-dir={profile_dir}",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--mute-audio", f"--window-size={width},{height}",
                "about:blank"]
        # bash puts the pipe ends at 3 and 4, where Chromium looks (dash takes
        # single-digit fds only); the originals are 10 or above.
        sh = f'exec "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-'
        os.makedirs(profile_dir, exist_ok=True)
        self.log_path = os.path.join(profile_dir, "chromium.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["/bin/bash", "-c", sh, "bash"] + args,
                                     pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, start_new_session=True)
        os.close(cmd_r)
        os.close(out_w)
        self._next_id = 0
        self._answers = {}
        self._cond = threading.Condition()
        self.events = []
        self.errors = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.size = (width, height)
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.page(f"{domain}.enable")
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    @staticmethod
    def _high_pipe():
        """A pipe whose two ends are fds 10 or above (never 3 or 4)."""
        ends = []
        for fd in os.pipe():
            ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
            os.close(fd)
        return ends

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._out_r, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._answers[None] = "closed"
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._cond:
                    if "id" in msg:
                        self._answers[msg["id"]] = msg
                    else:
                        self._event(msg.get("method"), msg.get("params", {}))
                    self._cond.notify_all()

    def _event(self, method, params):
        self.events.append((method, params))
        if method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.errors.append("exception: " + (d.get("exception", {}).get("description")
                                                or d.get("text", "")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append("console.error: " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            e = params["entry"]
            self.errors.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}")

    def call(self, method, session=None, timeout=30.0, **params):
        with self._cond:
            self._next_id += 1
            mid = self._next_id
        msg = {"id": mid, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._answers:
                if None in self._answers:
                    raise CdpError(f"{method}: chromium went away; log: {self.log_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CdpError(f"{method}: no answer in {timeout}s")
                self._cond.wait(left)
            ans = self._answers.pop(mid)
        if "error" in ans:
            raise CdpError(f"{method}: {ans['error']}")
        return ans.get("result", {})

    def page(self, method, **params):
        return self.call(method, session=self.session, **params)

    def navigate(self, url, timeout=30.0):
        n = len(self.events)
        self.page("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(m == "Page.loadEventFired" for m, _ in self.events[n:]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CdpError(f"{url}: no load event in {timeout}s")
                self._cond.wait(left)

    def eval(self, expression):
        """The value of a JavaScript expression (promises awaited)."""
        r = self.page("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise CdpError(f"{expression!r}: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def click(self, selector):
        """A real mouse click (press and release) at the middle of the
        element SELECTOR, as a user's."""
        box = self.eval(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: "center"}});
            const r = e.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2]; }})()""")
        if box is None:
            raise CdpError(f"no element {selector}")
        for kind in ("mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left",
                      clickCount=1)

    def type_into(self, selector, text):
        self.eval(f"document.querySelector({json.dumps(selector)}).focus()")
        self.page("Input.insertText", text=text)

    def screenshot(self, path):
        data = self.page("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        # Its renderer and helper processes: the group it leads (ours).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        for fd in (self._cmd_w, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
