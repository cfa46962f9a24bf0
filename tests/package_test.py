#!/usr/bin/python3
"""The Debian package (debian/), built, installed, started, removed (issue 13, "Packaging and
service"); run_all.py's suite "package".

  /usr/bin/python3 tests/package_test.py [--keep] [--debs DIR]

Steps (each a PASS/FAIL line; the first failure stops the run, the steps after it count as
failed; last line "N passed, N failed"):
  build      dpkg-buildpackage -us -uc -b on a copy of the tree (tracked and untracked files, no
             build dirs) in a temp dir, DEB_BUILD_OPTIONS="nocheck parallel=2" (debian/rules
             builds neither the unit tests nor the benchmarks); its duration is printed
  contents   wsed_*.deb holds /usr/bin/wsed, /lib/systemd/system/wsed.service, /etc/default/wsed
             (a conffile) and the man page when the build made one; python3-wsed_*.deb the module
  install    dpkg -i of both: the system user wsed, /etc/wsed/jwt-secret (root:wsed 0640), the
             unit enabled (deb-systemd-helper works without systemd running)
  verify     systemd-analyze verify /lib/systemd/system/wsed.service (the installed binary;
             Documentation=man:wsed(1) checked when the man page is installed)
  python     /usr/bin/python3 imports wsed from /usr/lib/python3.X/dist-packages
  start      systemd running (/run/systemd/system): systemctl start wsed, is-active. Else as the
             unit would: EnvironmentFile /etc/default/wsed (its --port changed to a free one, as an
             operator edits it), ExecStart with $WSED_OPTS split, as User=wsed (setpriv), with a
             NOTIFY_SOCKET this test owns: READY=1, then a WebSocket client with a token from
             `wsed gen-token --jwt-secret-file /etc/wsed/jwt-secret` gets server_ready; SIGTERM:
             STOPPING=1, exit 0
  remove     dpkg -r: the binary and the unit gone, /etc/default/wsed kept (conffile)
  purge      dpkg --purge: /etc/default/wsed, /etc/wsed and the enable link gone, dpkg knows no wsed

Needs root (dpkg -i; CI runs as root on a fresh Debian 12) and refuses to run when a wsed package
is already installed (it would replace and then purge it). Every command is bounded in time.
"""

import argparse
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "integration"))
import wsed_harness as H  # noqa: E402
from test_service import NotifySocket  # noqa: E402

PY = "/usr/bin/python3"
UNIT = "/lib/systemd/system/wsed.service"
DEFAULTS = "/etc/default/wsed"
SECRET = "/etc/wsed/jwt-secret"
ENABLE_LINK = "/etc/systemd/system/multi-user.target.wants/wsed.service"
PACKAGES = ("wsed", "python3-wsed")


class StepFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise StepFailed(what)


def sh(argv, timeout, env=None, cwd=None, what=None):
    """Runs argv (bounded); StepFailed with its output tail unless it exits 0. Returns stdout."""
    e = dict(os.environ)
    if env:
        e.update(env)
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env=e, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepFailed("%s: no exit within %ss" % (what or argv[0], timeout))
    out = p.stdout.decode("utf-8", "replace")
    if p.returncode != 0:
        raise StepFailed("%s: exit %s: %s" % (what or " ".join(argv), p.returncode, out[-3000:]))
    return out


def installed_version(pkg):
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", pkg], capture_output=True, text=True,
                       timeout=30)
    if p.returncode != 0:
        return None
    status = p.stdout.split()
    return status[-1] if "installed" in status[:3] else None


def known_to_dpkg(pkg):
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, timeout=30)
    return p.returncode == 0 and "not-installed" not in p.stdout


def copy_tree(dst):
    """The working tree's tracked and untracked (not ignored) files: what is being tested,
    committed or not, without build directories."""
    try:
        names = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "-co", "--exclude-standard"],
                               capture_output=True, timeout=60, check=True).stdout.split(b"\0")
    except (OSError, subprocess.SubprocessError):
        names = None
    if names is None:
        shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns("build*", ".git", "node_modules", "obj-*"))
        return
    for n in names:
        if not n:
            continue
        rel = n.decode("utf-8", "surrogateescape")
        src = os.path.join(REPO, rel)
        if not os.path.lexists(src):   # deleted in the working tree
            continue
        out = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copy2(src, out, follow_symlinks=False)


def env_file(path):
    """systemd's EnvironmentFile=: VAR=value lines, # comments, one level of quotes."""
    out = {}
    for line in open(path):
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        k, v = line.split("=", 1)
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def exec_start(unit_text, env):
    """ExecStart= as argv: $VAR (unbraced) split on whitespace, ${VAR} one word, like systemd."""
    m = re.search(r"^ExecStart=(.+)$", unit_text, re.M)
    check(m, "no ExecStart= in %s" % UNIT)
    argv = []
    for word in shlex.split(m.group(1)):
        if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", word):
            argv += env.get(word[1:], "").split()
        else:
            argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda v: env.get(v.group(1), ""), word))
    return argv


class Run:
    def __init__(self, keep, debs_dir=None):
        self.keep = keep
        self.debs_dir = debs_dir
        self.tmp = tempfile.mkdtemp(prefix="wsed-package-")
        self.src = os.path.join(self.tmp, "wsed")
        self.debs = {}
        self.man = False
        self.we_installed = False

    # -- steps --
    def build(self):
        if self.debs_dir:   # --debs: packages built before
            self.tmp_debs(self.debs_dir)
            self.man = False
            return
        copy_tree(self.src)
        check(os.path.exists(os.path.join(self.src, "debian", "rules")), "no debian/rules in the copy")
        t0 = time.monotonic()
        sh(["dpkg-buildpackage", "-us", "-uc", "-b"], timeout=1200, cwd=self.src, what="dpkg-buildpackage",
           env={"DEB_BUILD_OPTIONS": "nocheck parallel=2", "LC_ALL": "C.UTF-8"})
        print("  dpkg-buildpackage -us -uc -b: %.0f s" % (time.monotonic() - t0), flush=True)
        self.tmp_debs(self.tmp)
        self.man = os.path.exists(os.path.join(self.src, "debian", "tmp", "usr", "share", "man", "man1", "wsed.1"))

    def tmp_debs(self, d):
        for name in os.listdir(d):
            m = re.fullmatch(r"([a-z0-9.+-]+?)_[^_]+_[a-z0-9]+\.deb", name)
            if m:
                self.debs[m.group(1)] = os.path.join(d, name)
        check(set(PACKAGES) <= set(self.debs), "packages in %s: %r" % (d, sorted(self.debs)))

    def contents(self):
        files = sh(["dpkg-deb", "-c", self.debs["wsed"]], timeout=60)
        paths = set(re.findall(r"\s\.(/\S+)$", files, re.M))
        for p in ("/usr/bin/wsed", UNIT, DEFAULTS):
            check(p in paths, "%s not in the wsed package: %s" % (p, sorted(paths)))
        if self.man:
            check("/usr/share/man/man1/wsed.1.gz" in paths, "the build made wsed.1, the package lacks it")
        ctl = os.path.join(self.tmp, "control")
        sh(["dpkg-deb", "-e", self.debs["wsed"], ctl], timeout=60)
        check(open(os.path.join(ctl, "conffiles")).read().split() == [DEFAULTS], "conffiles")
        check("deb-systemd-helper" in open(os.path.join(ctl, "postinst")).read(), "no dh_installsystemd snippet")
        py = sh(["dpkg-deb", "-c", self.debs["python3-wsed"]], timeout=60)
        check(re.search(r"/usr/lib/python3\.\d+/dist-packages/wsed/__init__\.py$", py, re.M), py)
        check(re.search(r"/dist-packages/wsed/_native\.cpython-\S+\.so$", py, re.M), py)

    def install(self):
        self.we_installed = True
        sh(["dpkg", "-i", self.debs["wsed"], self.debs["python3-wsed"]], timeout=300, what="dpkg -i",
           env={"DEBIAN_FRONTEND": "noninteractive"})
        for p in PACKAGES:
            check(installed_version(p), "%s not installed after dpkg -i" % p)
        check(os.access("/usr/bin/wsed", os.X_OK), "/usr/bin/wsed")
        user = pwd.getpwnam("wsed")
        st = os.stat(SECRET)
        check(stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == 0 and st.st_gid == user.pw_gid,
              "%s: mode %o owner %d:%d" % (SECRET, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
        check(len(open(SECRET).read().strip()) >= 32, "the generated secret is short")
        check(os.path.islink(ENABLE_LINK) and os.path.realpath(ENABLE_LINK) == os.path.realpath(UNIT),
              "%s does not link to the unit" % ENABLE_LINK)

    def verify(self):
        # (the man page may be left out by dpkg path excludes, e.g. in Docker's Debian images)
        man = os.path.exists("/usr/share/man/man1/wsed.1.gz") and shutil.which("man")
        out = sh(["systemd-analyze", "verify", "--man=" + ("yes" if man else "no"), UNIT], timeout=60,
                 what="systemd-analyze verify")
        check(not out.strip(), "systemd-analyze verify said: %s" % out)

    def python(self):
        out = sh([PY, "-c", "import wsed, wsed.compat; print(wsed.__file__)"], timeout=60, cwd="/",
                 env={"PYTHONPATH": "", "PYTHONDONTWRITEBYTECODE": "1"})
        check(re.fullmatch(r"/usr/lib/python3(\.\d+)?/dist-packages/wsed/__init__\.py\n", out), out)

    def start(self):
        if os.path.isdir("/run/systemd/system"):
            return self.start_systemd()
        port = H.free_port()
        text = open(DEFAULTS).read()
        edited, n = re.subn(r"^(WSED_OPTS=.*--port )\d+", lambda m: m.group(1) + str(port), text, flags=re.M)
        check(n == 1, "no single --port in %s's WSED_OPTS" % DEFAULTS)
        with open(DEFAULTS, "w") as f:
            f.write(edited)
        env = env_file(DEFAULTS)
        argv = exec_start(open(UNIT).read(), env)
        check(argv[0] == "/usr/bin/wsed", argv)
        unit = open(UNIT).read()
        user = re.search(r"^User=(\S+)$", unit, re.M).group(1)
        with NotifySocket() as ns:
            os.chmod(ns.dir, 0o755)
            os.chmod(ns.path, 0o777)   # the service user sends to it
            e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
            e.update(env)
            e.update(ns.env())
            srv = H.Server(["setpriv", "--reuid=" + user, "--regid=" + user, "--init-groups", "--"] + argv,
                           name="installed wsed")
            srv.env = e
            srv.start()
            try:
                check(srv.port == port, "listening on %s, /etc/default/wsed says %d" % (srv.port, port))
                pid, ready = ns.wait_for("READY", 20)
                check(pid == srv.proc.pid, "READY=1 from pid %s, not the main process %s" % (pid, srv.proc.pid))
                uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", open("/proc/%d/status" % pid).read(), re.M)
                want = pwd.getpwnam(user).pw_uid
                check(uids and int(uids.group(1)) == want and int(uids.group(2)) == want,
                      "wsed runs as uid %s, not %s's %d" % (uids and uids.groups(), user, want))
                tok = sh(["/usr/bin/wsed", "gen-token", "--sub", "package-test", "--jwt-secret-file", SECRET],
                         timeout=30).strip()
                c = H.WSClient(port, path="/wse", extra=("Authorization: Bearer %s\r\n" % tok).encode())
                try:
                    m = c.next_message(10)
                    doc = json.loads(m[1]) if m and m[0] == "text" else {}
                    check(doc.get("t") == "server_ready" and doc["p"]["details"]["user_id"] == "package-test",
                          "first message %r" % (m,))
                finally:
                    c.close()
                srv.send_signal(signal.SIGTERM)
                ns.wait_for("STOPPING", 15)
                rc = srv.wait(20)
                check(rc == 0, "exit %s after SIGTERM: %s" % (rc, srv.stderr_text()[-1500:]))
            finally:
                srv.stop()

    def start_systemd(self):
        sh(["systemctl", "start", "wsed"], timeout=120)
        out = sh(["systemctl", "is-active", "wsed"], timeout=30).strip()
        check(out == "active", "systemctl is-active wsed: %s" % out)
        port = int(re.search(r"--port (\d+)", env_file(DEFAULTS).get("WSED_OPTS", "")).group(1))
        tok = sh(["/usr/bin/wsed", "gen-token", "--sub", "package-test", "--jwt-secret-file", SECRET], timeout=30).strip()
        c = H.WSClient(port, path="/wse", extra=("Authorization: Bearer %s\r\n" % tok).encode())
        try:
            m = c.next_message(10)
            check(m and m[0] == "text" and json.loads(m[1]).get("t") == "server_ready", "first message %r" % (m,))
        finally:
            c.close()
        sh(["systemctl", "reload", "wsed"], timeout=60)
        sh(["systemctl", "stop", "wsed"], timeout=120)

    def remove(self):
        sh(["dpkg", "-r", "python3-wsed", "wsed"], timeout=300, what="dpkg -r")
        for p in ("/usr/bin/wsed", UNIT):
            check(not os.path.lexists(p), "%s still there after dpkg -r" % p)
        check(os.path.exists(DEFAULTS), "%s (a conffile) went with dpkg -r" % DEFAULTS)
        check(not os.path.exists("/usr/lib/python3/dist-packages/wsed") and not any(
            os.path.exists("/usr/lib/%s/dist-packages/wsed" % d) for d in os.listdir("/usr/lib")
            if d.startswith("python3")), "the Python module is still installed")

    def purge(self):
        sh(["dpkg", "--purge", "python3-wsed", "wsed"], timeout=300, what="dpkg --purge")
        for p in (DEFAULTS, SECRET, "/etc/wsed", ENABLE_LINK):
            check(not os.path.lexists(p), "%s still there after dpkg --purge" % p)
        for p in PACKAGES:
            check(not known_to_dpkg(p), "dpkg still knows %s" % p)
        self.we_installed = False

    def cleanup(self):
        if self.we_installed:
            for p in PACKAGES:
                subprocess.run(["dpkg", "--purge", p], stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
        if not self.keep:
            shutil.rmtree(self.tmp, True)
        else:
            print("  kept %s" % self.tmp)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (the tree, the .debs)")
    ap.add_argument("--debs", help="use the wsed and python3-wsed .debs in this dir instead of building them")
    args = ap.parse_args()
    r = Run(args.keep, args.debs)
    steps = [("build", r.build), ("contents", r.contents), ("install", r.install), ("verify", r.verify),
             ("python", r.python), ("start", r.start), ("remove", r.remove), ("purge", r.purge)]
    passed = failed = 0
    try:
        problem = None
        if os.geteuid() != 0:
            problem = "needs root (dpkg -i): CI runs it as root"
        elif any(known_to_dpkg(p) for p in PACKAGES):
            problem = "a wsed package is already installed (dpkg -l wsed python3-wsed): this test would replace it"
        for name, fn in steps:
            if problem:
                print("FAIL package_%s: not run (%s)" % (name, problem), flush=True)
                failed += 1
                continue
            t0 = time.monotonic()
            try:
                fn()
                print("PASS package_%s (%.1fs)" % (name, time.monotonic() - t0), flush=True)
                passed += 1
            except (StepFailed, AssertionError, OSError, subprocess.SubprocessError, H.ServerError, KeyError) as e:
                print("FAIL package_%s (%.1fs): %s" % (name, time.monotonic() - t0, e), flush=True)
                failed += 1
                problem = "package_%s failed" % name
    finally:
        r.cleanup()
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
