"""`make install` and the init script it installs, run as an administrator
would: start, status, reload, reopen, stop. And every file `make install`
takes, or the README names under etc/, is tracked by git (a fresh clone has
it)."""
import filecmp
import glob
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import unittest

import lbdtest
from lbdtest import (ROOT, LbdTestCase, free_port, http_get, lbd_config, pid_alive,
                     proc_children, proc_title, wait_for)


def make_env():
    """The environment minus what would change what make does: a make
    running these tests (make e2e) exports its flags and level."""
    drop = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "DESTDIR", "PREFIX"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def make(*args):
    """make ARGS in the repository root: (exit code, output)."""
    p = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, env=make_env(),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    return p.returncode, p.stdout.decode("utf-8", "replace")


class InstallTest(LbdTestCase):

    def install(self, dest, *args):
        """make install into DEST with the lbd under test (`-o all`: no
        rebuild; make e2e has built everything)."""
        rc, out = make("-o", "all", "install", f"DESTDIR={dest}", f"LBD={self.lbd_bin}",
                       f"LBTOP={self.lbtop_bin}", *args)
        self.assertEqual(rc, 0, f"make install failed:\n{out}")
        return out

    def test_install_layout(self):
        """Every file in its place with its mode; the unit and the init script
        name the installed binary, for any PREFIX; an existing
        /etc/default/lbd is kept."""
        dest = self.path("dest")
        self.install(dest)
        modes = {"usr/local/sbin/lbd": 0o755, "usr/local/bin/lbtop": 0o755, "etc/lbd/lbd.conf.example": 0o644,
                 "etc/init.d/lbd": 0o755, "lib/systemd/system/lbd.service": 0o644,
                 "etc/default/lbd": 0o644}
        for rel, mode in modes.items():
            p = os.path.join(dest, rel)
            self.assertTrue(os.path.isfile(p), f"{rel} not installed")
            self.assertEqual(stat.S_IMODE(os.stat(p).st_mode), mode, rel)
        self.assertTrue(filecmp.cmp(os.path.join(dest, "usr/local/sbin/lbd"), self.lbd_bin,
                                    shallow=False))
        unit = open(os.path.join(dest, "lib/systemd/system/lbd.service")).read()
        execs = re.findall(r"^Exec\w+=(\S+)", unit, re.M)
        self.assertIn("/usr/local/sbin/lbd", execs)
        for prog in execs:
            if prog != "/bin/kill":
                self.assertTrue(os.access(dest + prog, os.X_OK), f"unit runs {prog}: not installed")

        # The defaults file shows the init script's defaults, commented out.
        script = open(os.path.join(dest, "etc/init.d/lbd")).read()
        defaults = open(os.path.join(dest, "etc/default/lbd")).read()
        shown = re.findall(r"^#([A-Z_]+=.*)$", defaults, re.M)
        self.assertGreaterEqual(len(shown), 6, defaults)
        for line in shown:
            self.assertRegex(script, rf"(?m)^{re.escape(line)}$",
                             "etc/default/lbd shows a default the init script does not have")

        dest2 = self.path("dest2")
        self.install(dest2, "PREFIX=/opt/lbd")
        self.assertTrue(os.access(os.path.join(dest2, "opt/lbd/sbin/lbd"), os.X_OK))
        unit = open(os.path.join(dest2, "lib/systemd/system/lbd.service")).read()
        self.assertIn("ExecStart=/opt/lbd/sbin/lbd -c", unit)
        self.assertNotIn("/usr/local", unit)
        self.assertRegex(open(os.path.join(dest2, "etc/init.d/lbd")).read(),
                         r"(?m)^DAEMON=/opt/lbd/sbin/lbd$")
        self.assertIn("#DAEMON=/opt/lbd/sbin/lbd\n",
                      open(os.path.join(dest2, "etc/default/lbd")).read())
        mine = "# the administrator's\nWORKERS=3\n"
        self.write_file(os.path.join(dest2, "etc/default/lbd"), mine)
        self.install(dest2, "PREFIX=/opt/lbd")
        self.assertEqual(open(os.path.join(dest2, "etc/default/lbd")).read(), mine)


class SystemdUnitTest(LbdTestCase):

    def test_unit_verifies(self):
        """The installed unit passes `systemd-analyze verify` without a
        word (an unknown key or an option systemd does not know shows up
        there), tests the file before a start and a reload, restarts on
        failure, and says how to upgrade (USR2 to the main pid)."""
        if shutil.which("systemd-analyze") is None:
            self.skipTest("systemd-analyze is not installed (Debian package systemd)")
        dest = self.path("dest")
        rc, out = make("-o", "all", "install", f"DESTDIR={dest}", f"LBD={self.lbd_bin}")
        self.assertEqual(rc, 0, out)
        unit = open(os.path.join(dest, "lib/systemd/system/lbd.service")).read()
        self.assertRegex(unit, r"(?m)^ExecStartPre=/usr/local/sbin/lbd -t -c ")
        self.assertRegex(unit, r"(?m)^ExecReload=/usr/local/sbin/lbd -t -c ")
        self.assertRegex(unit, r"(?m)^ExecReload=/bin/kill -HUP \$MAINPID$")
        self.assertRegex(unit, r"(?m)^Restart=on-failure$")
        self.assertRegex(unit, r"(?m)^#.*systemctl kill --kill-who=main --signal=USR2 lbd$")
        caps = re.search(r"(?m)^CapabilityBoundingSet=(.*)$", unit).group(1).split()
        self.assertEqual(sorted(caps), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE",
                                        "CAP_SYS_RESOURCE"])
        # verify checks that the commands exist: name the installed binary.
        binary = os.path.join(dest, "usr/local/sbin/lbd")
        path = self.write_file(self.path("lbd.service"),
                               unit.replace("/usr/local/sbin/lbd", binary))
        p = subprocess.run(["systemd-analyze", "verify", path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual((p.returncode, p.stdout.decode(errors="replace")), (0, ""))


class InitScriptTest(LbdTestCase):
    """The installed etc/init.d/lbd against a real lbd and backends."""

    def setUp(self):
        super().setUp()
        self.dest = self.path("dest")
        rc, out = make("-o", "all", "install", f"DESTDIR={self.dest}", f"LBD={self.lbd_bin}")
        self.assertEqual(rc, 0, f"make install failed:\n{out}")
        self.script = os.path.join(self.dest, "etc/init.d/lbd")
        self.conf = os.path.realpath(self.path("lbd.conf"))   # lbd reports the real path
        self.pidfile = self.path("lbd.pid")
        self.error_log = self.path("error.log")
        self.listen = f"127.0.0.1:{free_port()}"
        self.daemons = set()        # every lbd pid seen: masters and their children
        self.addCleanup(self.kill_leftovers)

    def defaults(self, **more):
        """/etc/default/lbd under DESTDIR: the installed lbd on our files."""
        settings = {"DAEMON": os.path.join(self.dest, "usr/local/sbin/lbd"),
                    "CONF": self.conf, "PIDFILE": self.pidfile}
        settings.update(more)
        self.write_file(os.path.join(self.dest, "etc/default/lbd"),
                        "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in settings.items()))

    def config(self, backend, error_log=None):
        return lbd_config(self.listen, [{"name": "web", "servers": [(backend.addr, 1)]}],
                          workers=2, shutdown_timeout="5s",
                          extra=f'error_log = "{error_log or self.error_log}";')

    def init(self, action):
        """Run the installed script: (exit code, stdout + stderr)."""
        env = dict(os.environ, LBD_DEFAULTS=os.path.join(self.dest, "etc/default/lbd"))
        # lbd -d sends stderr to /dev/null: sanitizer reports go to files.
        for var, name in (("ASAN_OPTIONS", "asan"), ("UBSAN_OPTIONS", "ubsan")):
            opts = [o for o in [env.get(var)] if o]
            env[var] = ":".join(opts + [f"log_path={self.path(name)}"])
        p = subprocess.run([self.script, action], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120)
        return p.returncode, p.stdout.decode("utf-8", "replace")

    def assertInit(self, action, rc, *expect):
        got, out = self.init(action)
        self.assertEqual(got, rc, f"`lbd {action}`: exit {got}, expected {rc}; output:\n{out}")
        for text in expect:
            self.assertRegex(out, text, f"`lbd {action}`")
        return out

    def master_pid(self):
        pid = int(open(self.pidfile).read())
        self.assertEqual(proc_title(pid), "lbd: master")
        self.daemons.add(pid)
        self.daemons.update(proc_children(pid))
        return pid

    def snapshot(self):
        p = subprocess.run([self.lbd_bin, "-s", "-c", self.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=15)
        self.assertEqual(p.returncode, 0, p.stderr)
        snap = json.loads(p.stdout)
        self.daemons.update(w["pid"] for w in snap["workers"] if w["pid"] > 0)
        return snap

    def kill_leftovers(self):
        """If the test failed with lbd running: kill it, by the pids we saw."""
        try:
            self.master_pid()
        except (OSError, ValueError, AssertionError):
            pass
        for pid in sorted(self.daemons):
            if pid_alive(pid) and (proc_title(pid) or "").startswith("lbd:"):
                os.kill(pid, signal.SIGKILL)

    def check_logs(self):
        """No sanitizer report, and no worker died."""
        reports = glob.glob(self.path("asan*")) + glob.glob(self.path("ubsan*"))
        self.assertEqual(reports, [], "sanitizer reports:\n" +
                         "".join(open(r).read()[:3000] for r in reports))
        text = "".join(open(p).read() for p in glob.glob(self.error_log + "*"))
        self.assertNotIn("respawning", text)

    def serving(self, backend):
        r = http_get(self.listen, "/")
        return r.status == 200 and r.backend == backend

    def test_init_script(self):
        """configtest, start, status, reload, reopen and stop, each with its
        LSB exit code; a bad configuration is refused with FILE:LINE and
        leaves the running lbd alone; stop returns once the master is gone."""
        b1, b2 = self.start_backends("b1", "b2")
        self.defaults(WORKERS=1)
        good1 = self.config(b1)
        bad = good1 + "frobnicate = 1;\n"
        bad_line = good1.count("\n") + 1
        where = re.escape(f"{self.conf}:{bad_line}:")

        self.assertInit("status", 3, "not running")
        self.write_file(self.conf, good1)
        self.assertInit("configtest", 0, "successful")
        self.write_file(self.conf, bad)
        self.assertInit("configtest", 1, where)
        self.assertInit("start", 6, where, "not started")
        self.assertFalse(os.path.exists(self.pidfile))
        self.assertInit("status", 3)

        self.write_file(self.conf, good1)
        self.assertInit("start", 0)
        pid = self.master_pid()
        self.assertEqual(http_get(self.listen, "/").backend, "b1")
        self.assertInit("status", 0, rf"running \(pid {pid}\)")
        self.assertInit("start", 0, "already running")
        self.assertEqual(self.master_pid(), pid)
        # WORKERS=1 beats the file's workers = 2.
        wait_for(lambda: [w["id"] for w in self.snapshot()["workers"]] == [0], 10,
                 what="one worker")

        # reload: the new backend, once the old worker has drained.
        self.write_file(self.conf, self.config(b2))
        self.assertInit("reload", 0)
        snap = self.snapshot()
        self.assertEqual(snap["generation"], 2)
        wait_for(lambda: [w["generation"] for w in self.snapshot()["workers"]] == [2], 15,
                 what="the old worker to leave")
        for _ in range(5):
            self.assertTrue(self.serving("b2"))

        # A configuration lbd -t refuses is not even sent.
        self.write_file(self.conf, self.config(b2) + "frobnicate = 1;\n")
        self.assertInit("reload", 6, where, "not reloaded")
        after = self.snapshot()
        self.assertEqual((after["generation"], after["reload_failures"]), (2, 0))
        # One that passes -t but that the master refuses: the script says so.
        self.write_file(self.conf, self.config(b2, error_log=self.path("no/such/dir/e.log")))
        self.assertInit("reload", 1, "reload failed")
        after = self.snapshot()
        self.assertEqual((after["generation"], after["reload_failures"]), (2, 1))
        self.write_file(self.conf, self.config(b2))
        self.assertEqual(self.master_pid(), pid)
        for _ in range(5):
            self.assertTrue(self.serving("b2"))

        # reopen after logrotate moved the log.
        os.rename(self.error_log, self.error_log + ".1")
        self.assertInit("reopen", 0)
        wait_for(lambda: os.path.exists(self.error_log), 10, what="a new error_log")

        self.snapshot()
        children = proc_children(pid)
        self.assertInit("stop", 0)
        self.assertFalse(pid_alive(pid), "stop returned before the master exited")
        self.assertFalse(any(pid_alive(c) for c in children), "a worker outlived the master")
        self.assertFalse(os.path.exists(self.pidfile))
        self.assertInit("status", 3, "not running")
        self.assertInit("stop", 0, "not running")
        self.assertInit("reload", 7)
        self.assertInit("reopen", 7)
        self.assertInit("frobnicate", 2, r"Usage: .*\{start\|stop\|restart\|reload")
        self.check_logs()

    def test_upgrade(self):
        """upgrade: the master runs the file now at DAEMON, same pid, its
        workers too; a configuration lbd -t refuses is not even sent (6),
        one the new binary's check refuses leaves the running binary
        serving (1); not running: 7."""
        (b1,) = self.start_backends("b1")
        self.defaults()
        daemon = os.path.join(self.dest, "usr/local/sbin/lbd")
        good = self.config(b1)
        self.write_file(self.conf, good)
        self.assertInit("start", 0)
        pid = self.master_pid()
        self.assertEqual(self.snapshot()["version"], "0.2.0")

        shutil.copy(lbdtest.LBD_B, daemon + ".new")
        os.replace(daemon + ".new", daemon)
        self.assertInit("upgrade", 0, rf"Upgrading lbd \(pid {pid}\)")
        snap = self.snapshot()
        self.assertEqual((snap["version"], snap["upgrades"], snap["master_pid"]),
                         ("0.2.0+b", 1, pid))
        self.assertEqual(self.master_pid(), pid)
        new = os.stat(daemon).st_ino

        def workers_new():
            kids = [k for k in proc_children(pid)
                    if (proc_title(k) or "").startswith("lbd: worker")]
            return kids and all(os.stat(f"/proc/{k}/exe").st_ino == new for k in kids)
        wait_for(workers_new, 15, what="the workers to run the new file")
        self.assertTrue(self.serving("b1"))

        self.write_file(self.conf, good + "frobnicate = 1;\n")
        self.assertInit("upgrade", 6, "not upgraded")
        self.write_file(self.conf, self.config(b1, error_log=self.path("no/such/dir/e.log")))
        self.assertInit("upgrade", 1, "upgrade failed")
        snap = self.snapshot()
        self.assertEqual((snap["version"], snap["upgrades"], snap["upgrade_failures"]),
                         ("0.2.0+b", 1, 1))
        self.write_file(self.conf, good)
        self.assertEqual(self.master_pid(), pid)
        self.assertTrue(self.serving("b1"))
        self.assertInit("stop", 0)
        self.assertInit("upgrade", 7)
        self.check_logs()

    def test_restart_and_stuck_stop(self):
        """restart refuses a bad configuration and keeps lbd running; a
        master that does not exit within STOP_TIMEOUT is killed, its
        children with it."""
        (b1,) = self.start_backends("b1")
        self.defaults()
        good = self.config(b1)
        self.write_file(self.conf, good)
        self.assertInit("start", 0)
        pid = self.master_pid()
        self.write_file(self.conf, good + "frobnicate = 1;\n")
        self.assertInit("restart", 6, "not restarted")
        self.assertEqual(self.master_pid(), pid)
        self.write_file(self.conf, good)
        self.assertInit("restart", 0)
        old, pid = pid, self.master_pid()
        self.assertNotEqual(pid, old)
        self.assertFalse(pid_alive(old))
        self.assertTrue(self.serving("b1"))

        children = wait_for(lambda: len(proc_children(pid)) == 3 and proc_children(pid), 10,
                            what="two workers and the control process")
        self.daemons.update(children)
        self.defaults(STOP_TIMEOUT=1)
        os.kill(pid, signal.SIGSTOP)
        self.assertInit("stop", 0, "did not stop within 1s")
        self.assertFalse(pid_alive(pid))
        self.assertFalse(any(pid_alive(c) for c in children))
        self.assertInit("status", 3)


class TrackedTest(unittest.TestCase):
    """Files that exist only on the machine of whoever wrote them (say, kept
    out of git by a .gitignore pattern) break `make install` on a fresh
    clone: every file the install target takes and every etc/ path the
    README names must be tracked."""

    def git(self, *args):
        return subprocess.run(["git", "-C", ROOT, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=60)

    def install_sources(self):
        """Repository files the install recipe reads: the relative paths in
        `make -n install` (destinations are absolute under DESTDIR; the
        binary is under BUILD, also made absolute here)."""
        rc, out = make("-n", "-o", "all", "install", "DESTDIR=/nonexistent-destdir",
                       "BUILD=/nonexistent-build")
        self.assertEqual(rc, 0, out)
        words = shlex.split(out)
        return {w for w in words if "/" in w and re.fullmatch(r"[\w.][\w./-]*", w)}

    def readme_paths(self):
        """etc/... paths in README.md: in the text, and the etc/ line of the
        layout block ("etc/   a, b/c")."""
        text = open(os.path.join(ROOT, "README.md")).read()
        paths = {m.rstrip(".") for m in re.findall(r"(?<![\w/.$-])etc/[\w.-][\w./-]*", text)}
        for m in re.finditer(r"^etc/ +(\S.*)$", text, re.M):
            paths |= {"etc/" + name.strip() for name in m.group(1).split(",")}
        return paths

    def test_installed_and_documented_files_are_tracked(self):
        if shutil.which("git") is None:
            self.skipTest("git is not installed")
        top = self.git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or os.path.realpath(top.stdout.decode().strip()) != \
                os.path.realpath(ROOT):
            self.skipTest(f"{ROOT} is not a git checkout: {top.stderr.decode().strip()}")
        tracked = set(self.git("ls-files", "-z").stdout.decode().split("\0"))

        sources = self.install_sources()
        self.assertIn("etc/lbd.conf", sources, "parsing `make -n install` found nothing")
        self.assertIn("etc/lbd.conf", self.readme_paths(), "parsing README.md found nothing")
        wanted = sorted(sources | self.readme_paths())

        def is_tracked(p):
            p = p.rstrip("/")
            return p in tracked or any(t.startswith(p + "/") for t in tracked)
        missing = [p for p in wanted if not is_tracked(p)]
        self.assertEqual(missing, [], "installed by `make install` or named in README.md, "
                         "but not in git (a fresh clone lacks them; see .gitignore)")
        ignored = self.git("check-ignore", "--no-index", "--", *wanted).stdout.decode().split()
        self.assertEqual(ignored, [], ".gitignore matches files the tree needs")
