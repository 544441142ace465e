# -*- python -*-
# easeml-buildbot worker. Copy this directory's buildbot.tac into the worker's base
# directory together with easeml-worker.toml (see easeml-worker.toml.example), then
# `twistd -ny buildbot.tac` (or `buildbot-worker start <dir>`).
#
# Settings come from easeml-worker.toml next to this file, overridden by the
# environment: EASEML_WORKER_MASTER (host:port), EASEML_WORKER_NAME,
# EASEML_WORKER_PASSWORD (or EASEML_WORKER_PASSWORD_FILE), EASEML_WORKER_GPUS,
# EASEML_WORKER_WARM ("off": no warm worker commands, see below), EASEML_WORKER_SHIM ("off":
# the steps run the interpreter's easeml, not the site-less warm client). The [env]
# table is exported to the build steps (EASEML_WORKER_KEY, EASEML_WORKER_RUNNER,
# EASEML_WORKER_CACHE_DIR, ...). EASEML_WORKER_KEY_B64 (environment only) is the private key,
# base64-encoded: see below.
import os
import sys
import tomllib

from buildbot_worker.bot import Worker
from twisted.application import service
from twisted.python.log import FileLogObserver, ILogObserver
from twisted.python.logfile import LogFile

basedir = os.path.abspath(os.path.dirname(__file__))
settings_path = os.environ.get("EASEML_WORKER_SETTINGS") or os.path.join(basedir, "easeml-worker.toml")
settings = {}
if os.path.exists(settings_path):
    with open(settings_path, "rb") as fh:
        settings = tomllib.load(fh)


def _setting(key, default=None):
    return os.environ.get("EASEML_WORKER_" + key.upper()) or settings.get(key, default)


def _resolve(path):
    return path if os.path.isabs(path) else os.path.join(basedir, path)


master = _setting("master", "localhost:9989")
host, _, port = master.rpartition(":")
workername = _setting("name", "worker1")
passwd = _setting("password")
if not passwd and _setting("password_file"):
    with open(_resolve(_setting("password_file"))) as fh:
        passwd = fh.read().strip()
if not passwd:
    raise SystemExit(f"{settings_path}: 'password' or 'password_file' is required")

# Build steps inherit this environment: the `easeml` command of this interpreter first on
# PATH, and the operator's [env] settings (key path, runner, limits). Paths are relative
# to this directory.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
for key, value in (settings.get("env") or {}).items():
    value = str(value)
    if key.endswith(("_KEY", "_FILE", "_DIR")) and value and not os.path.isabs(value):
        value = _resolve(value)
    os.environ.setdefault(key, value)
os.environ.setdefault("EASEML_WORKER_CACHE_DIR", os.path.join(basedir, "cache"))

# GPUs: EASEML_WORKER_GPUS (or `gpus` above) is the number this worker offers. It is sent to
# the master as worker info (info/easeml_gpus, Buildbot's own mechanism), so only builds
# whose model.gpus fits come here, and build steps see it (the runner grants device requests).
from easeml_buildbot.gpus import parse_offer  # noqa: E402

try:
    gpus = parse_offer(_setting("gpus", (settings.get("env") or {}).get("EASEML_WORKER_GPUS")))
except ValueError as exc:
    raise SystemExit(f"{settings_path}: {exc}")
os.environ["EASEML_WORKER_GPUS"] = str(gpus)
os.makedirs(os.path.join(basedir, "info"), exist_ok=True)
with open(os.path.join(basedir, "info", "easeml_gpus"), "w") as fh:
    fh.write(f"{gpus}\n")

# EASEML_WORKER_KEY_B64: the private key base64-encoded (as ease.ml/ci's GitHub secrets held
# it). Decoded once into a 0600 file in a private directory (tmpfs when there is one) that
# EASEML_WORKER_KEY then names; the variable itself is dropped before the worker connects, so
# neither the master (which receives the worker's environment) nor any build step sees it.
from easeml_buildbot.custody.keys import KeysError, key_from_env  # noqa: E402

try:
    key_path = key_from_env(os.environ)
except KeysError as exc:
    raise SystemExit(f"EASEML_WORKER_KEY_B64: {exc}")
if key_path is not None:
    os.environ["EASEML_WORKER_KEY"] = str(key_path)

application = service.Application("buildbot-worker")
logfile = LogFile.fromFullPath(os.path.join(basedir, "twistd.log"), rotateLength=10_000_000, maxRotatedFiles=10)
application.setComponent(ILogObserver, FileLogObserver(logfile).emit)

# Warm worker commands (easeml_buildbot/runner/warm.py): `easeml worker evaluate|inspect` are
# forked, one fresh process each, from a server that has imported their code (~0.7 s a build
# less). It holds no key, token or data; its socket is in this directory (or a private
# temporary one when the path is too long for AF_UNIX). warm = "off" runs every command cold.
# Started after EASEML_WORKER_KEY_B64 is gone; restarted by Twisted's ProcessMonitor if it dies.
if str(_setting("warm", "on")).strip().lower() not in ("off", "false", "0", "no"):
    from twisted.runner.procmon import ProcessMonitor

    warm_sock = os.path.join(basedir, "warm.sock")
    if len(os.fsencode(warm_sock)) > 100:  # sun_path holds 108 bytes
        import tempfile

        warm_sock = os.path.join(tempfile.mkdtemp(prefix="easeml-warm-"), "sock")
    os.environ["EASEML_WARM_SOCKET"] = warm_sock
    # the `easeml` the steps run: a shim first on PATH that hands warm commands to the server
    # from an interpreter without site (~0.04 s, not ~0.1 s; runner/warm_client.py) and exec's
    # this interpreter's easeml for everything else or when no server answers. shim = "off":
    # the steps run that easeml directly (its site, sitecustomize and PYTHONPATH apply)
    if str(_setting("shim", "on")).strip().lower() not in ("off", "false", "0", "no"):
        import easeml_buildbot
        from easeml_buildbot.runner.warm_client import install_shim

        shim_dir = os.path.join(os.path.dirname(warm_sock), "easeml-warm-bin")
        try:
            install_shim(shim_dir, sys.executable, os.path.dirname(os.path.dirname(easeml_buildbot.__file__)),
                         os.path.join(os.path.dirname(sys.executable), "easeml"))
        except (OSError, ValueError) as e:  # the steps run the interpreter's easeml (still warm)
            from twisted.python import log

            log.msg(f"easeml worker: no warm-client shim: {e}")
        else:
            os.environ["PATH"] = shim_dir + os.pathsep + os.environ["PATH"]
    monitor = ProcessMonitor()
    monitor.addProcess("easeml-warm", [sys.executable, "-m", "easeml_buildbot.runner.warm", warm_sock],
                       # only what an interpreter needs: no worker secret (passphrase, password)
                       # is in the server's environment; each command brings its own
                       env={k: v for k, v in os.environ.items()
                            if k in ("PATH", "HOME", "LANG", "TZ", "TMPDIR", "PYTHONPATH", "PYTHONHOME",
                                     "PYTHONUNBUFFERED", "PYTHONIOENCODING") or k.startswith("LC_")},
                       cwd=basedir)
    monitor.setServiceParent(application)

s = Worker(host, int(port), workername, passwd, basedir, int(_setting("keepalive", 600)),
           umask=0o077, maxdelay=int(_setting("maxdelay", 30)), numcpus=None, allow_shutdown=None,
           maxRetries=None, protocol="pb", useTls=False, delete_leftover_dirs=False,
           connection_string=None, proxy_connection_string=None)
s.setServiceParent(application)
