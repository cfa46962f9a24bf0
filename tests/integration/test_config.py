"""wsed's configuration (issue 13): every flag also as WSED_<FLAG>, a TOML --config file, one
precedence rule (flag > env > file > default), --print-config (sources, secrets masked, read back
by --config), --check-config (one line per problem, exit 2), --help grouped, units printed as the
parsers take them, and the man page made from the same table.

The real wsed binary: its answers to --print-config / --check-config, and real servers started
from a config file (a limit from the file, overridden by the environment, checked on the wire).
Run with tests/integration/run_tests.py -k config (under /usr/bin/python3). Only 127.0.0.1; every
process started here is bounded in time and stopped by PID.
"""

import os
import re
import shutil
import subprocess
import tempfile

import test_wse as W
import wsed_harness as H
from wsed_harness import OP_TEXT

BIN = W.BIN
SAN = W.SAN
limit = H.limit
SECRET = W.SECRET
EXAMPLE = os.path.join(H.REPO, "docs", "wsed.example.toml")


def clean_env(**extra):
    """The environment without any WSED_* variable of the caller, plus extra."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("WSED_")}
    if SAN:
        e.update(H.SANITIZER_ENV)
    e.update(extra)
    return e


def wsed_cmd(*args, env=None, timeout=10):
    """Runs wsed with args in a clean environment; returns (rc, stdout, stderr)."""
    p = subprocess.run([BIN] + [str(a) for a in args], stdin=subprocess.DEVNULL, capture_output=True,
                       env=clean_env(**(env or {})), cwd=H.REPO, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def err_lines(err):
    return [ln for ln in err.splitlines() if ln.strip()]


class tmpdir:
    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="wsed-config-")
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)

    def file(self, name, text):
        path = os.path.join(self.path, name)
        with open(path, "w") as f:
            f.write(text)
        return path


LINE_RE = re.compile(r"^([a-z0-9-]+) = (.*?)\s+# (flag|env|file|default)(?: (WSED_[A-Z0-9_]+))?$")


def printed(*args, env=None):
    """wsed --print-config ARGS: {key: (value text, source, env name)}, and the raw text."""
    rc, out, err = wsed_cmd("--print-config", *args, env=env)
    assert rc == 0, "--print-config %s: rc %s, stderr %r" % (" ".join(map(str, args)), rc, err[:600])
    settings = {}
    for line in out.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE_RE.match(line)
        assert m, "--print-config line not in the documented shape: %r" % line
        assert m.group(1) not in settings, "key %s printed twice" % m.group(1)
        settings[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    return settings, out


def help_flags():
    rc, out, _ = wsed_cmd("--help")
    assert rc == 0
    return out, sorted(set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]+)", out)))


@limit(30)
def test_config_every_flag_has_an_env_name_and_a_key():
    out, flags = help_flags()
    envs = dict(re.findall(r"--([a-z][a-z0-9-]+)[^\n]*?\(Env:(WSED_[A-Z0-9_]+)\)", out))
    actions = {"help", "version", "print-config", "check-config"}
    settings, _ = printed("--insecure-no-auth")
    for f in flags:
        if f in actions:
            assert f not in envs, "--%s is an action, it must not read the environment" % f
            continue
        if f not in envs:
            continue  # a name in a description (e.g. --jwt-* ), not an option line
        assert envs[f] == "WSED_" + f.upper().replace("-", "_"), (f, envs[f])
        if f != "config":
            assert f in settings, "--%s missing from --print-config" % f
    options = set(re.findall(r"^\s+(?:-h,)?--([a-z][a-z0-9-]+)", out, re.M))
    missing = sorted(o for o in options - actions if o not in envs)
    assert not missing, "options without an environment name in --help: %s" % missing
    assert len(set(envs.values())) == len(envs), "two flags share an environment name"
    # The variables that hold the secrets themselves are not any flag's name.
    assert "WSED_JWT_SECRET" not in envs.values() and "WSED_JWT_PREVIOUS_SECRET" not in envs.values()
    assert envs["jwt-secret-env"] == "WSED_JWT_SECRET_ENV"
    assert set(settings) == set(envs) - {"config"}, sorted(set(settings) ^ (set(envs) - {"config"}))


@limit(30)
def test_config_help_is_grouped_by_topic():
    out, _ = help_flags()
    groups = re.findall(r"^([A-Z][A-Za-z -]+):$", out, re.M)
    for g in ("Listen", "Limits", "Timeouts", "TLS", "Auth", "Fan-out", "Redis", "Recovery", "Presence",
              "Logging", "Configuration"):
        assert g in groups, "--help has no %s group: %s" % (g, groups)
    # Each flag sits in its topic's block.
    blocks = dict((m.group(1), m.group(2)) for m in re.finditer(r"^([A-Z][A-Za-z -]+):\n(.*?)(?=^\S|\Z)", out,
                                                                  re.M | re.S))
    assert "--max-connections " in blocks["Limits"] and "--redis-url " in blocks["Redis"]
    assert "--tls-cert-file " in blocks["TLS"] and "--jwt-alg " in blocks["Auth"]
    assert "--config " in blocks["Configuration"] and "--idle-timeout " in blocks["Timeouts"]


@limit(60)
def test_config_precedence_flag_env_file_default():
    with tmpdir() as d:
        conf = d.file("wsed.toml", 'max-connections = 1111\nidle-timeout = "90s"\nquiet = true\n')
        key = "max-connections"
        # default alone
        s, _ = printed()
        assert s[key][:2] == ("100000", "default"), s[key]
        # file > default
        s, _ = printed("--config", conf)
        assert s[key][:2] == ("1111", "file") and s["idle-timeout"][:2] == ('"90s"', "file"), s[key]
        assert s["quiet"][:2] == ("true", "file")
        # env > file
        s, _ = printed("--config", conf, env={"WSED_MAX_CONNECTIONS": "2222", "WSED_QUIET": "off"})
        assert s[key] == ("2222", "env", "WSED_MAX_CONNECTIONS"), s[key]
        assert s["quiet"] == ("false", "env", "WSED_QUIET"), s["quiet"]
        assert s["idle-timeout"][:2] == ('"90s"', "file")
        # env > default
        s, _ = printed(env={"WSED_IDLE_TIMEOUT": "500ms"})
        assert s["idle-timeout"][:2] == ('"500ms"', "env"), s["idle-timeout"]
        # flag > env
        s, _ = printed("--max-connections", "3333", env={"WSED_MAX_CONNECTIONS": "2222"})
        assert s[key][:2] == ("3333", "flag"), s[key]
        # flag > file
        s, _ = printed("--config", conf, "--idle-timeout", "2m")
        assert s["idle-timeout"][:2] == ('"2m"', "flag") and s[key][:2] == ("1111", "file")
        # all three: the flag
        s, _ = printed("--config", conf, "--max-connections", "3333", env={"WSED_MAX_CONNECTIONS": "2222"})
        assert s[key][:2] == ("3333", "flag"), s[key]
        # the config file itself from the environment
        s, out = printed(env={"WSED_CONFIG": conf})
        assert s[key][:2] == ("1111", "file") and conf in out


@limit(60)
def test_config_file_and_env_drive_a_real_server():
    """A limit from the file bites on the wire; the environment overrides it; a flag overrides both."""
    with tmpdir() as d:
        conf = d.file("wsed.toml", 'host = "127.0.0.1"\nport = 0\nmode = "echo"\nworkers = 1\n'
                                   'max-message-size = "1KiB"\nmax-connections = 4321\n')

        def start(*args, **env):
            return H.supervised(H.Server([BIN, "--config", conf] + list(args), env=clean_env(**env)))

        def echo_or_close(port, size):
            ws = H.RawWS(port)
            try:
                ws.send_frame(OP_TEXT, b"x" * size)
                ws.wait_for(lambda s: s.messages() or s.close_code() is not None, 5)
                return ws.messages(), ws.close_code()
            finally:
                ws.abort()

        with start() as srv:
            assert "max 4321 connections" in srv.first_line, srv.first_line
            msgs, code = echo_or_close(srv.port, 2000)
            assert not msgs and code == 1009, "2000 bytes over max-message-size 1KiB from the file: %s %s" % (
                msgs, code)
        with start(WSED_MAX_MESSAGE_SIZE="4KiB") as srv:
            msgs, code = echo_or_close(srv.port, 2000)
            assert msgs and len(msgs[0][1]) == 2000, "WSED_MAX_MESSAGE_SIZE=4KiB did not override the file"
        with start("--max-message-size", "512", "--max-connections", "99", WSED_MAX_MESSAGE_SIZE="4KiB") as srv:
            assert "max 99 connections" in srv.first_line, srv.first_line
            msgs, code = echo_or_close(srv.port, 1000)
            assert not msgs and code == 1009, "the flag --max-message-size 512 did not win"


@limit(30)
def test_config_unknown_key_and_bad_lines_exit_2():
    with tmpdir() as d:
        cases = [
            ('max-conections = 10\n', "unknown key 'max-conections'"),
            ('max_connections = 10\n', "unknown key 'max_connections'"),
            ('help = true\n', "unknown key 'help'"),
            ('config = "/etc/other.toml"\n', "unknown key 'config'"),
            ('[listen]\nport = 1\n', "[sections] are not used"),
            ('port = 70000\n', "port"),
            ('idle-timeout = "soon"\n', "expected a duration"),
            ('max-message-size = "lots"\n', "expected a size"),
            ('quiet = perhaps\n', "quiet: expected true or false"),
            ('jwt-kid = "a#b"\n', "line 1: a '#' inside a quoted value"),
            ('host = "127.0.0.1\n', "line 1: a quoted value is not closed"),
            ('quiet\n', "line 1: expected key = value"),
            ('port = 1\nport = 2\n', "line 2: key 'port' given twice (first on line 1)"),
        ]
        for text, want in cases:
            conf = d.file("bad.toml", text)
            rc, out, err = wsed_cmd("--mode", "echo", "--config", conf)
            lines = err_lines(err)
            assert rc == 2, "%r: rc %s, stderr %r" % (text, rc, err[:300])
            assert len(lines) == 1 and want in lines[0] and conf in lines[0], "%r: stderr %r" % (text, err[:400])
            assert out == "", "%r: stdout %r" % (text, out[:200])
        rc, _, err = wsed_cmd("--config", os.path.join(d.path, "missing.toml"))
        assert rc == 2 and "cannot read the file" in err, err
        rc, _, err = wsed_cmd(env={"WSED_CONFIG": os.path.join(d.path, "missing.toml")})
        assert rc == 2 and "--config (from WSED_CONFIG) " in err and len(err_lines(err)) == 1, err


@limit(30)
def test_config_env_values_and_bad_env():
    for text, want in (("1", "true"), ("TRUE", "true"), ("yes", "true"), ("on", "true"), ("0", "false"),
                       ("False", "false"), ("no", "false"), ("off", "false")):
        s, _ = printed(env={"WSED_RECOVERY": text})
        assert s["recovery"][:2] == (want, "env"), (text, s["recovery"])
    s, _ = printed(env={"WSED_RECOVERY": ""})
    assert s["recovery"][:2] == ("false", "default"), "an empty variable counts as unset"
    rc, _, err = wsed_cmd("--mode", "echo", env={"WSED_QUIET": "maybe", "WSED_PORT": "abc",
                                                 "WSED_MAX_MESSAGE_SIZE": "1XB"})
    lines = err_lines(err)
    assert rc == 2 and len(lines) == 3, "three bad variables, three lines: %r" % err
    for name in ("WSED_QUIET", "WSED_PORT", "WSED_MAX_MESSAGE_SIZE"):
        assert any(("environment " + name) in ln for ln in lines), (name, lines)
    # Variables that are no flag's (WSED_JWT_SECRET holds the secret) are not errors.
    s, _ = printed(env={"WSED_JWT_SECRET": SECRET, "WSED_NOT_A_FLAG": "1"})
    assert "jwt-secret" not in s


@limit(30)
def test_check_config_collects_every_problem():
    with tmpdir() as d:
        conf = d.file("wsed.toml", 'bogus = 1\nmax-fragments = 0\ntls-cert-file = "%s"\n'
                      'jwt-secret-file = "%s"\n' % (os.path.join(d.path, "nope.pem"),
                                                     d.file("short.key", "too short\n")))
        rc, out, err = wsed_cmd("--config", conf, "--check-config", "--inbound", "redis",
                                env={"WSED_INBOX_CAPACITY": "1000"})
        lines = err_lines(err)
        assert rc == 2 and out == "", "rc %s out %r" % (rc, out)
        wants = ["unknown key 'bogus'", "max-fragments", "WSED_INBOX_CAPACITY", "--inbound redis needs",
                 "--tls-cert-file and --tls-key-file go together", "nope.pem: cannot read",
                 "--jwt-secret-file %s" % os.path.join(d.path, "short.key")]
        for w in wants:
            assert sum(w in ln for ln in lines) == 1, "problem %r not on exactly one line: %r" % (w, lines)
        assert len(lines) == len(wants), "one line per problem: %r" % lines
        assert all(ln.startswith("wsed: ") for ln in lines)
        # Without the secret: said; with it: ok.
        rc, out, err = wsed_cmd("--check-config")
        assert rc == 2 and "no JWT secret" in err and len(err_lines(err)) == 1, err
        rc, out, err = wsed_cmd("--check-config", env={"WSED_JWT_SECRET": SECRET})
        assert rc == 0 and out.startswith("ok: ") and err == "", (rc, out, err)


@limit(30)
def test_check_config_accepts_the_example_file():
    rc, out, err = wsed_cmd("--config", EXAMPLE, "--check-config", env={"WSED_JWT_SECRET": SECRET})
    assert rc == 0, "docs/wsed.example.toml: rc %s stderr %r" % (rc, err)
    assert re.match(r"^ok: \d+ settings \(0 from flags, 0 from the environment, (\d+) from .*wsed.example.toml",
                    out), out
    s, _ = printed("--config", EXAMPLE, env={"WSED_JWT_SECRET": SECRET})
    with open(EXAMPLE) as f:
        keys = [ln.split("=")[0].strip() for ln in f if "=" in ln and not ln.lstrip().startswith("#")]
    assert keys and all(s[k][1] == "file" for k in keys), [k for k in keys if s[k][1] != "file"]


@limit(30)
def test_print_config_masks_secrets():
    password, secret, previous = "hunter2-redis-pass", SECRET, "previous-secret-also-32-bytes-long!!"
    with tmpdir() as d:
        conf = d.file("wsed.toml", 'redis-url = "redis://app:%s@127.0.0.1:6390/2"\n' % password)
        rc, out, err = wsed_cmd("--config", conf, "--print-config",
                                env={"WSED_JWT_SECRET": secret, "WSED_JWT_PREVIOUS_SECRET": previous})
        assert rc == 0, err
        for hidden in (password, secret, previous):
            assert hidden not in out and hidden not in err, "%r printed" % hidden
        assert 'redis-url = "redis://app:***@127.0.0.1:6390/2"' in out, out
        assert "JWT secret: environment WSED_JWT_SECRET (set, %d bytes)" % len(secret) in out
        # Nor in an error naming the endpoint, with or without a scheme.
        for seeds in ("app:%s@127.0.0.1:99999" % password, "redis://app:%s@127.0.0.1:99999" % password):
            rc, out, err = wsed_cmd("--redis-cluster", "127.0.0.1:7000," + seeds, env={"WSED_JWT_SECRET": secret})
            assert rc == 2 and password not in err and "app:***@127.0.0.1:99999" in err, err
        s, out = printed("--redis-cluster", "127.0.0.1:7000,app:%s@127.0.0.1:7001" % password)
        assert password not in out and s["redis-cluster"][0] == '"127.0.0.1:7000,app:***@127.0.0.1:7001"', \
            s["redis-cluster"]
        # A lone user-info part is the password (redis://PASSWORD@host), and a password may hold
        # '/' or ':': masked up to the last '@' all the same.
        for url, shown in (("redis://%s@127.0.0.1:6390" % password, '"redis://***@127.0.0.1:6390"'),
                           ("redis://:ab/%s@127.0.0.1:6390" % password, '"redis://:***@127.0.0.1:6390"'),
                           ("redis://u:a:%s@127.0.0.1:6390/1" % password, '"redis://u:***@127.0.0.1:6390/1"')):
            s, out = printed("--redis-url", url)
            assert password not in out and s["redis-url"][0] == shown, (url, s["redis-url"])
        s, out = printed("--redis-cluster", "%s@127.0.0.1:7000,127.0.0.1:7001" % password)
        assert password not in out and s["redis-cluster"][0] == '"***@127.0.0.1:7000,127.0.0.1:7001"', \
            s["redis-cluster"]


@limit(60)
def test_print_config_round_trip():
    with tmpdir() as d:
        args = ["--port", "6001", "--idle-timeout", "1500ms", "--max-message-size", "3MiB", "--recovery",
                "--allowed-origins", "https://a.example,https://b.example", "--jwt-issuer", "it's", "--jwt-audience", 'say "hi"',
                "--recovery-topics", "chat.*,news.*", "--redis-prefix", "app one:"]
        s1, p1 = printed(*args, env={"WSED_MAX_CONNECTIONS": "2048", "WSED_QUIET": "yes"})
        conf = d.file("p1.toml", p1)
        s2, p2 = printed("--config", conf)
        assert {k: v[0] for k, v in s1.items()} == {k: v[0] for k, v in s2.items()}, \
            sorted(k for k in s1 if s1[k][0] != s2[k][0])
        assert all(v[1] == "file" for v in s2.values())
        assert s2["idle-timeout"][0] == '"1500ms"' and s2["max-message-size"][0] == '"3MiB"'
        s3, p3 = printed("--config", d.file("p2.toml", p2))
        assert p3.replace(d.path + "/p2.toml", "X") == p2.replace(d.path + "/p1.toml", "X"), "not a fixed point"
        # A value the file cannot hold is said, commented out, and the rest still reads back.
        s4, p4 = printed("--jwt-kid", "a#b", "--jwt-issuer", "both ' and \"")
        assert "jwt-kid" not in s4 and "jwt-issuer" not in s4
        assert "# jwt-kid: not representable in the file" in p4 and "# jwt-issuer: not representable" in p4
        s5, _ = printed("--config", d.file("p4.toml", p4))
        assert s5["jwt-kid"][:2] == ('""', "default") and len(s5) == len(s4) + 2


@limit(30)
def test_config_units_printed_as_parsed():
    s, _ = printed("--redis-buffer-bytes", "16384KiB", "--recovery-ttl", "600", "--linger-timeout", "1500ms",
                   "--max-header-bytes", "10000", "--ping-interval", "0")
    assert s["redis-buffer-bytes"][0] == '"16MiB"' and s["recovery-ttl"][0] == '"10m"'
    assert s["linger-timeout"][0] == '"1500ms"' and s["max-header-bytes"][0] == '"10000"'
    assert s["ping-interval"][0] == '"0"' and s["max-unfinished-bytes"][0] == '"256MiB"'
    out, _ = help_flags()
    defaults, _ = printed()
    # --help shows the defaults in the same form as --print-config, and each is accepted back.
    shown_defaults = re.findall(r"--([a-z-]+) (?:SIZE|DURATION)=(\S+)", out)
    assert len(shown_defaults) > 20, shown_defaults
    for name, shown in shown_defaults:
        assert defaults[name][0] == '"%s"' % shown, (name, shown, defaults[name])
        rc, _, err = wsed_cmd("--mode", "echo", "--check-config", "--" + name, shown)
        assert rc == 0, (name, shown, err)
    rc, _, err = wsed_cmd("--mode", "echo", "--recv-buffer-size", "2MiB")
    assert rc == 2 and "out of range (512 to 1MiB)" in err, err


@limit(30)
def test_config_man_page_has_every_flag_and_renders_cleanly():
    rc, man, err = wsed_cmd("--help-man")
    assert rc == 0 and man.startswith(".TH WSED 1"), (rc, man[:100], err)
    built = os.path.join(os.path.dirname(BIN), "wsed.1")
    if os.path.exists(built):  # made by the meson target from the same binary
        with open(built) as f:
            assert f.read() == man, "%s differs from wsed --help-man" % built
    _, flags = help_flags()
    for f in flags:
        assert ("\\-\\-" + f.replace("-", "\\-")) in man, "--%s of --help missing from the man page" % f
    groff = shutil.which("groff")
    if not groff:
        print("SKIP render: groff not installed")
        return
    p = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z"], input=man.encode(), capture_output=True, timeout=20)
    assert p.returncode == 0 and p.stderr == b"", "groff warnings: %r" % p.stderr[:800]
    p = subprocess.run([groff, "-man", "-Tutf8"], input=man.encode(), capture_output=True, timeout=20)
    text = re.sub(r".\x08", "", p.stdout.decode("utf-8", "replace"))  # grotty's overstrike bold
    assert "WSED_MAX_CONNECTIONS" in text and "OPTIONS" in text and "Redis" in text


@limit(60)
def test_check_config_loads_the_tls_files_as_the_server_does():
    import test_tls as T
    c = T.certs()
    env = {"WSED_JWT_SECRET": SECRET}
    rc, out, err = wsed_cmd("--check-config", "--tls-cert-file", c["server"], "--tls-key-file", c["server_key"],
                            "--tls-ca-file", c["ca"], env=env)
    assert rc == 0 and out.startswith("ok: "), (rc, out, err)
    # Readable, but the key is another certificate's: only loading them says so.
    rc, out, err = wsed_cmd("--check-config", "--tls-cert-file", c["server"], "--tls-key-file", c["server_b_key"],
                            env=env)
    lines = err_lines(err)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("wsed: TLS: "), err
    with tmpdir() as d:
        conf = d.file("tls.toml", 'tls-cert-file = "%s"\ntls-key-file = "%s"\n' % (c["server"], d.file("k", "junk")))
        rc, out, err = wsed_cmd("--config", conf, "--check-config", env=env)
        assert rc == 2 and len(err_lines(err)) == 1 and "TLS: " in err, err
