"""Service key creation with real gpg: files, modes, passphrases, nothing left behind."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from custody_helpers import gpg_processes_for, scan_dirs_for, scan_roots
from custody_helpers import easeml
from easeml_buildbot.custody import gpghome
from easeml_buildbot.custody.dataset import DatasetError, decrypted_dataset
from easeml_buildbot.custody.keys import (
    KeysError, create_keypair, key_fingerprint, read_passphrase_file, resolve_passphrase,
)
from support.gpgkeys import encrypted_test_set


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _key_body_lines(priv: Path) -> list[bytes]:
    """A few base64 lines of the armored private key: material that must never leak."""
    lines = [ln for ln in priv.read_bytes().splitlines() if len(ln) >= 40 and b"-----" not in ln]
    return lines[:3]


def test_create_without_passphrase(tmp_path, temp_tracker, caplog):
    caplog.set_level(logging.DEBUG)
    pub, priv = create_keypair(tmp_path / "keys", passphrase=None)
    assert pub == tmp_path / "keys" / "easeml_pub.asc" and priv == tmp_path / "keys" / "easeml_priv.asc"
    assert _mode(priv) == 0o600
    assert _mode(tmp_path / "keys") == 0o700
    assert b"BEGIN PGP PUBLIC KEY BLOCK" in pub.read_bytes()
    assert b"PRIVATE" not in pub.read_bytes()
    assert b"BEGIN PGP PRIVATE KEY BLOCK" in priv.read_bytes()
    # the key really is a usable, unprotected encryption key
    assert len(key_fingerprint(pub)) == 40 and key_fingerprint(pub) == key_fingerprint(priv)

    # the temporary GNUPGHOME was private, is gone, and no agent runs for it
    homes = [p for p in temp_tracker.created if p.name.startswith("easeml-gnupg-")]
    assert homes, "key creation must use a temporary GNUPGHOME"
    assert temp_tracker.leftovers() == []
    for home in homes:
        assert gpg_processes_for(home) == [], "gpg-agent still running for a removed home"
    secret = _key_body_lines(priv)
    assert not [r for r in caplog.records if any(s.decode() in r.getMessage() for s in secret)]
    assert scan_dirs_for(secret, scan_roots()) == []


def test_home_is_private_and_its_agent_stopped(service_keys):
    with gpghome.temporary_gpg() as gpg:
        home = Path(gpg.gnupghome)
        assert _mode(home) == 0o700
        assert str(home).startswith("/dev/shm/") or gpghome.secure_tmp_base() is None
        assert gpg.import_keys(service_keys.private.read_bytes()).sec_imported == 1
        # importing a secret key starts a gpg-agent for this home: the check below can see it
        assert gpg_processes_for(home), "expected a gpg-agent for the temporary home"
    assert not home.exists()
    assert gpg_processes_for(home) == []


def test_create_with_passphrase_protects_the_key(service_keys_with_passphrase, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    keys = service_keys_with_passphrase
    assert keys.passphrase and _mode(keys.private) == 0o600
    assert keys.passphrase.encode() not in keys.private.read_bytes()
    y = np.arange(20) % 3
    enc = encrypted_test_set(keys, tmp_path / "t.csv.gpg", np.arange(40).reshape(20, 2), y)
    with pytest.raises(DatasetError, match="passphrase-protected and no passphrase was given"):
        with decrypted_dataset(enc, keys.private):
            pass
    with pytest.raises(DatasetError, match="wrong passphrase"):
        with decrypted_dataset(enc, keys.private, passphrase=keys.passphrase + "x"):
            pass
    with decrypted_dataset(enc, keys.private, passphrase=keys.passphrase) as ds:
        assert ds.labels.tolist() == y[ds.source_rows].tolist()
    assert keys.passphrase not in caplog.text
    assert not [r for r in caplog.records if keys.passphrase in r.getMessage()]


def test_create_refuses_to_overwrite(tmp_path):
    create_keypair(tmp_path, passphrase=None)
    before = (tmp_path / "easeml_priv.asc").read_bytes()
    with pytest.raises(KeysError, match="already exists"):
        create_keypair(tmp_path, passphrase=None)
    assert (tmp_path / "easeml_priv.asc").read_bytes() == before


def test_multiline_passphrase_rejected(tmp_path):
    with pytest.raises(KeysError, match="single line"):
        create_keypair(tmp_path, passphrase="a\nb")
    assert not (tmp_path / "easeml_pub.asc").exists()


def test_resolve_passphrase(tmp_path, monkeypatch):
    monkeypatch.delenv("EASEML_KEY_PASSPHRASE", raising=False)
    f = tmp_path / "pp"
    f.write_text("from file\nignored\n")
    assert resolve_passphrase(f) == "from file"
    assert resolve_passphrase(None, no_passphrase=True) is None
    with pytest.raises(KeysError, match="no passphrase given"):
        resolve_passphrase(None)
    assert resolve_passphrase(None, required=False) is None
    monkeypatch.setenv("EASEML_KEY_PASSPHRASE", "from env")
    assert resolve_passphrase(None) == "from env"
    assert resolve_passphrase(f) == "from file"  # the file wins over the environment
    with pytest.raises(KeysError, match="exclude each other"):
        resolve_passphrase(f, no_passphrase=True)
    (tmp_path / "empty").write_text("")
    with pytest.raises(KeysError, match="empty"):
        read_passphrase_file(tmp_path / "empty")
    with pytest.raises(KeysError, match="cannot read"):
        read_passphrase_file(tmp_path / "missing")


def test_cli_keys_create(tmp_path, capsys, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("EASEML_KEY_PASSPHRASE", raising=False)
    # no passphrase choice: refuse, with the three options named
    assert easeml(["keys", "create", "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "--passphrase-file" in err and "--no-passphrase" in err and "Traceback" not in err
    assert not (tmp_path / "a" / "easeml_priv.asc").exists()

    assert easeml(["keys", "create", "--out", str(tmp_path / "b"), "--no-passphrase",
                   "--name", "CI", "--email", "ci@example.org"]) == 0
    out = capsys.readouterr().out
    assert "easeml_pub.asc" in out and "not protected" in out
    assert _mode(tmp_path / "b" / "easeml_priv.asc") == 0o600

    secret = "pp-" + os.urandom(8).hex()
    pfile = tmp_path / "pass.txt"
    pfile.write_text(secret + "\n")
    assert easeml(["keys", "create", "--out", str(tmp_path / "c"), "--passphrase-file", str(pfile)]) == 0
    cap = capsys.readouterr()
    assert secret not in cap.out + cap.err and "protected by a passphrase" in cap.out
    assert secret not in caplog.text
    body = _key_body_lines(tmp_path / "c" / "easeml_priv.asc")
    assert not any(b.decode() in caplog.text + cap.out + cap.err for b in body)

    # the real gpg agrees that the exported key is protected (s2k, not plain)
    listing = subprocess.run(["gpg", "--batch", "--list-packets", str(tmp_path / "c" / "easeml_priv.asc")],
                             capture_output=True, text=True, env={**os.environ, "GNUPGHOME": str(tmp_path)})
    assert "protected" in listing.stdout or "s2k" in listing.stdout.lower()


def test_unknown_key_type(tmp_path):
    with pytest.raises(KeysError, match="unknown key type"):
        create_keypair(tmp_path, passphrase=None, key_type="dsa")
    assert not (tmp_path / "easeml_priv.asc").exists()


def test_failed_key_write_leaves_no_partial_files(tmp_path, monkeypatch):
    """A write that fails midway (disk full) removes what it started, so a retry can succeed."""
    import errno

    from easeml_buildbot.custody import keys as keys_mod

    real_fsync = os.fsync

    def fsync_full_for_private_key(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("easeml_priv.asc"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(keys_mod.os, "fsync", fsync_full_for_private_key)
    out = tmp_path / "keys"
    with pytest.raises(KeysError, match=r"easeml_priv\.asc: cannot write the key file: No space left"):
        create_keypair(out, passphrase=None, s2k_count=65536)
    assert sorted(p.name for p in out.iterdir()) == []
    monkeypatch.setattr(keys_mod.os, "fsync", real_fsync)
    pub, priv = create_keypair(out, passphrase=None, s2k_count=65536)
    assert pub.is_file() and priv.is_file()
