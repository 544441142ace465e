"""The service key pair: created in a throw-away GnuPG home, exported to two files.

``easeml_pub.asc`` is published (repositories encrypt their test sets to it);
``easeml_priv.asc`` (mode 0600) lives only on workers. The passphrase, if any, comes from a
file or the ``EASEML_KEY_PASSPHRASE`` environment variable; it is never a constant here and
never printed or logged.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import logging
import os
import re
from collections.abc import MutableMapping
from pathlib import Path

from easeml_buildbot.custody.gpghome import private_tmpdir, remove_tree, secure_tmp_base, temporary_gpg

log = logging.getLogger(__name__)

PUBLIC_KEY_NAME = "easeml_pub.asc"
PRIVATE_KEY_NAME = "easeml_priv.asc"
PASSPHRASE_ENV = "EASEML_KEY_PASSPHRASE"
PRIVATE_KEY_ENV = "EASEML_PRIVATE_KEY"
KEY_B64_ENV = "EASEML_WORKER_KEY_B64"
_ARMORED_PRIVATE = re.compile(rb"-----BEGIN PGP PRIVATE KEY BLOCK-----.*?-----END PGP PRIVATE KEY BLOCK-----\r?\n?",
                              re.S)
DEFAULT_NAME = "ease.ml CI service"
DEFAULT_EMAIL = "easeml-ci@localhost"


class KeysError(Exception):
    """A key could not be created, read or used; the message says which file and why."""


def default_private_key_path() -> Path:
    """Where workers look for the private key: ``$EASEML_PRIVATE_KEY`` or ``~/.easeml/keys/``."""
    env = os.environ.get(PRIVATE_KEY_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.easeml/keys").expanduser() / PRIVATE_KEY_NAME


def read_passphrase_file(path: str | os.PathLike[str]) -> str:
    """The first line of ``path`` (trailing newline stripped); an empty file is an error."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeysError(f"{p}: cannot read passphrase file: {exc.strerror}") from None
    line = text.splitlines()[0] if text else ""
    if not line:
        raise KeysError(f"{p}: passphrase file is empty")
    return line


def resolve_passphrase(
    passphrase_file: str | os.PathLike[str] | None = None,
    no_passphrase: bool = False,
    *,
    required: bool = True,
) -> str | None:
    """Pick the passphrase: ``--passphrase-file``, else ``$EASEML_KEY_PASSPHRASE``, else none.

    With ``required`` (key creation) one of the three must be chosen explicitly, so a key is
    never left unprotected by accident. For decryption ``required=False``: no passphrase
    simply means an unprotected key.
    """
    if no_passphrase and passphrase_file:
        raise KeysError("--no-passphrase and --passphrase-file exclude each other")
    if no_passphrase:
        return None
    if passphrase_file:
        return read_passphrase_file(passphrase_file)
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    if required:
        raise KeysError(
            f"no passphrase given: use --passphrase-file FILE, set {PASSPHRASE_ENV}, "
            "or pass --no-passphrase for an unprotected key"
        )
    return None


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never overwrite) with ``mode``; a failed write leaves no partial file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise KeysError(f"{path}: cannot write the key file: {exc.strerror or exc}") from None
        raise
    finally:
        os.close(fd)


def create_keypair(
    out_dir: str | os.PathLike[str],
    name: str = DEFAULT_NAME,
    email: str = DEFAULT_EMAIL,
    passphrase: str | None = None,
    *,
    key_type: str = "ed25519",
    s2k_count: int | None = None,
) -> tuple[Path, Path]:
    """Create the service key pair and write ``out_dir/easeml_pub.asc`` and ``easeml_priv.asc``.

    ``key_type`` is ``ed25519`` (signing primary + cv25519 encryption subkey, fast) or
    ``rsa`` (RSA-3072 for both). Existing key files are never overwritten. ``s2k_count``
    (passphrase-hashing iterations) defaults to gpg-agent's calibration (~100 ms per unlock);
    only throw-away test keys should lower it.
    """
    out = Path(out_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    pub_path, priv_path = out / PUBLIC_KEY_NAME, out / PRIVATE_KEY_NAME
    for p in (pub_path, priv_path):
        if p.exists():
            raise KeysError(f"{p}: already exists; refusing to overwrite a service key")
    if passphrase is not None and ("\n" in passphrase or "\r" in passphrase or not passphrase):
        raise KeysError("the passphrase must be a non-empty single line")
    if key_type == "ed25519":
        params = dict(key_type="EDDSA", key_curve="ed25519", key_usage="sign",
                      subkey_type="ECDH", subkey_curve="cv25519", subkey_usage="encrypt")
    elif key_type == "rsa":
        params = dict(key_type="RSA", key_length=3072, key_usage="sign",
                      subkey_type="RSA", subkey_length=3072, subkey_usage="encrypt")
    else:
        raise KeysError(f"unknown key type {key_type!r} (use 'ed25519' or 'rsa')")

    with temporary_gpg(s2k_count=s2k_count) as gpg:
        spec = gpg.gen_key_input(
            name_real=name, name_email=email, expire_date=0,
            passphrase=passphrase, no_protection=passphrase is None, **params,
        )
        key = gpg.gen_key(spec)
        fpr = key.fingerprint
        if not fpr:
            raise KeysError(f"gpg could not create the key: {key.status or 'unknown error'}")
        public = gpg.export_keys(fpr, armor=True)
        if passphrase is None:
            secret = gpg.export_keys(fpr, secret=True, armor=True, expect_passphrase=False)
        else:
            secret = gpg.export_keys(fpr, secret=True, armor=True, passphrase=passphrase)
        if "PRIVATE KEY" not in (secret or ""):
            raise KeysError("gpg could not export the new private key")
        _write_private(pub_path, public.encode("ascii"), 0o644)
        try:
            _write_private(priv_path, secret.encode("ascii"), 0o600)
        except BaseException:
            pub_path.unlink(missing_ok=True)
            raise
        del secret
    log.info("created service key %s in %s", fpr, out)
    return pub_path, priv_path


def key_fingerprint(key_path: str | os.PathLike[str]) -> str:
    """The primary fingerprint of the (public or private) key in ``key_path``."""
    p = Path(key_path)
    if not p.is_file():
        raise KeysError(f"{p}: key file not found")
    with temporary_gpg() as gpg:
        keys = gpg.scan_keys(str(p))
    fprs = [k["fingerprint"] for k in keys if k.get("fingerprint")]
    if not fprs:
        raise KeysError(f"{p}: no OpenPGP key found in this file")
    return fprs[0]


def private_key_material(data: bytes, where: str | os.PathLike[str]) -> bytes:
    """The private key in ``data`` (the bytes of a key file), ready for ``gpg --import``.

    Accepts an armored private key block, a binary secret key (a packet of tag 5), and a file
    holding *both* blocks: ease.ml/ci's ``easeml_sec.asc`` is the public block followed by the
    private one. Only the private block(s) are returned. A file with only a public key, or no
    key at all, raises :class:`KeysError` naming ``where`` (never quoting the file).
    """
    blocks = _ARMORED_PRIVATE.findall(data)
    if blocks:
        return b"".join(blocks)
    head = data.lstrip()[:1]
    if head and head[0] & 0x80:
        tag = (head[0] & 0x3F) if head[0] & 0x40 else ((head[0] >> 2) & 0x0F)
        if tag == 5:  # Secret-Key packet
            return data
    if b"PUBLIC KEY BLOCK" in data:
        raise KeysError(f"{where}: this is the public key; decryption needs the private key "
                        "(easeml_priv.asc, or ease.ml/ci's easeml_sec.asc holding both blocks)")
    raise KeysError(f"{where}: not an OpenPGP private key")


def key_from_env(environ: MutableMapping[str, str] | None = None) -> Path | None:
    """Take the private key from ``$EASEML_WORKER_KEY_B64`` (base64 of the key file, as the
    original ease.ml/ci kept it in a GitHub secret) into a 0600 file in a new 0700 directory,
    on tmpfs where there is one; return its path, or None when the variable is unset.

    The variable is removed from ``environ`` (a Buildbot worker sends its whole environment
    to the master and hands it to every build step). The file is removed when the process
    exits; after a crash the next decryption on the machine sweeps it
    (``gpghome.sweep_stale``). Errors never quote the value.
    """
    environ = os.environ if environ is None else environ
    raw = environ.pop(KEY_B64_ENV, None)
    if raw is None or not raw.strip():
        return None
    try:
        data = base64.b64decode("".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeysError(f"{KEY_B64_ENV}: not valid base64 (encode the key file with `base64 -w0`)") from None
    material = private_key_material(data, KEY_B64_ENV)
    directory = private_tmpdir("key", secure_tmp_base())
    path = directory / PRIVATE_KEY_NAME
    try:
        _write_private(path, material, 0o600)
    except BaseException:
        remove_tree(directory)
        raise
    atexit.register(remove_tree, directory)
    del data, material
    return path
