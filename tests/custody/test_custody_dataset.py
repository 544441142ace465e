"""Encrypted test sets with real gpg: round trips, row rule, every bad input, no leaks."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from custody_helpers import gpg_processes_for, scan_dirs_for, scan_roots
from custody_helpers import easeml
from easeml_buildbot.custody.dataset import (
    DatasetError, check_plaintext, dataset_id, decrypted_dataset, encrypt_dataset,
)
from support.gpgkeys import encrypted_test_set, make_service_keys, write_test_set

N = 60


@pytest.fixture
def data():
    """Features with distinctive values (easy to find if they leak) and integer labels."""
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    X = np.round(rng.uniform(1000, 2000, size=(N, 3)), 6)
    y = rng.integers(0, 3, size=N)
    return X, y


def _row_needles(X: np.ndarray, y: np.ndarray, fmt: str) -> list[bytes]:
    """Byte strings that only a plaintext row of this data would contain."""
    out = []
    for row, lab in list(zip(X.tolist(), y.tolist()))[:10]:
        if fmt == "csv":
            out.append(",".join(map(str, [*row, lab])).encode())
        out.append(str(row[0]).encode())
    return out


@pytest.fixture
def no_leak(temp_tracker, caplog, capsys):
    """After the test: every temp dir gone, nothing of ``needles`` in temp dirs or logs."""
    caplog.set_level(logging.DEBUG)
    needles: list[bytes] = []
    yield needles
    assert temp_tracker.leftovers() == [], "temporary directories left behind"
    for home in temp_tracker.created:
        assert gpg_processes_for(home) == [], f"a gpg daemon still runs for {home}"
    assert scan_dirs_for(needles, scan_roots()) == []
    cap = capsys.readouterr()
    text = caplog.text + cap.out + cap.err
    leaked = [n for n in needles if n.decode(errors="replace") in text]
    assert leaked == [], f"plaintext or key material in logs/output: {leaked[:2]}"


def _key_needles(priv: Path) -> list[bytes]:
    return [ln for ln in priv.read_bytes().splitlines() if len(ln) >= 40 and b"-----" not in ln][:3]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "npz"])
def test_round_trip(fmt, service_keys, tmp_path, data, no_leak):
    X, y = data
    no_leak += _row_needles(X, y, fmt) + _key_needles(service_keys.private)
    enc = encrypted_test_set(service_keys, tmp_path / f"test.{fmt}.gpg", X, y)
    assert sorted(os.listdir(tmp_path)) == [f"test.{fmt}.gpg"]  # the plaintext is gone
    ciphertext = enc.read_bytes()
    assert dataset_id(enc) == hashlib.sha256(ciphertext).hexdigest()
    assert not any(n in ciphertext for n in _row_needles(X, y, fmt))
    with decrypted_dataset(enc, service_keys.private) as ds:
        work = ds.features_path.parent
        assert ds.format == fmt and ds.n_rows == N and ds.dataset_id == dataset_id(enc)
        perm = ds.source_rows  # the row order: a permutation of the file's rows
        assert sorted(perm.tolist()) == list(range(N)) and perm.tolist() != list(range(N))
        assert ds.labels.tolist() == y[perm].tolist()
        assert stat.S_IMODE(work.stat().st_mode) == 0o700
        assert stat.S_IMODE(ds.features_path.stat().st_mode) == 0o600
        assert os.listdir(work) == [ds.features_path.name], "only the features file may remain"
        if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK):
            assert str(work).startswith("/dev/shm/")
        if fmt == "csv":
            rows = list(csv.reader(ds.features_path.open()))
            assert rows[0] == ["x0", "x1", "x2"]
            np.testing.assert_array_equal(np.array(rows[1:], dtype=float), X[perm])
        elif fmt == "jsonl":
            objs = [json.loads(line) for line in ds.features_path.open()]
            assert all("label" not in o for o in objs)
            np.testing.assert_array_equal(np.array([[o["x0"], o["x1"], o["x2"]] for o in objs]), X[perm])
        else:
            with np.load(ds.features_path) as npz:
                assert npz.files == ["X"]
                np.testing.assert_array_equal(npz["X"], X[perm])
        assert "labels" not in repr(ds) and str(y.tolist()) not in repr(ds)
    assert not work.exists()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "npz"])
def test_rows_takes_a_prefix_of_the_fixed_permutation(fmt, service_keys, tmp_path, data):
    """rows=M is the first M rows of the full order, the same on every use."""
    X, y = data
    enc = encrypted_test_set(service_keys, tmp_path / f"t.{fmt}.gpg", X, y)
    with decrypted_dataset(enc, service_keys.private) as ds:
        perm = ds.source_rows.tolist()
    assert sorted(perm) == list(range(N)) and perm[:17] != list(range(17))
    for _ in range(2):  # the same rows on every use
        with decrypted_dataset(enc, service_keys.private, rows=17) as ds:
            assert ds.n_rows == 17 and ds.source_rows.tolist() == perm[:17]
            assert ds.labels.tolist() == y[perm[:17]].tolist()
            if fmt == "npz":
                with np.load(ds.features_path) as npz:
                    np.testing.assert_array_equal(npz["X"], X[perm[:17]])
            elif fmt == "csv":
                rows = list(csv.reader(ds.features_path.open()))[1:]
                np.testing.assert_array_equal(np.array(rows, dtype=float), X[perm[:17]])
            else:
                assert sum(1 for _ in ds.features_path.open()) == 17


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "npz"])
def test_too_few_rows(fmt, service_keys, tmp_path, data, no_leak):
    X, y = data
    no_leak += _row_needles(X, y, fmt)
    enc = encrypted_test_set(service_keys, tmp_path / f"t.{fmt}.gpg", X, y)
    with pytest.raises(DatasetError, match=f"needs {N + 1} samples, the test set has {N}"):
        with decrypted_dataset(enc, service_keys.private, rows=N + 1):
            pytest.fail("must not enter the block")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "npz"])
def test_missing_label_column(fmt, service_keys, tmp_path, data, no_leak):
    X, y = data
    no_leak += _row_needles(X, y, fmt)
    enc = encrypted_test_set(service_keys, tmp_path / f"t.{fmt}.gpg", X, y, label_column="target")
    with pytest.raises(DatasetError, match="'label'") as err:
        with decrypted_dataset(enc, service_keys.private):
            pytest.fail("must not enter the block")
    assert str(enc) in str(err.value)
    with decrypted_dataset(enc, service_keys.private, label_column="target") as ds:
        assert ds.labels.tolist() == y[ds.source_rows].tolist()


def test_wrong_key(service_keys, tmp_path, data, no_leak):
    X, y = data
    other = make_service_keys(tmp_path / "other")
    no_leak += _row_needles(X, y, "csv") + _key_needles(service_keys.private) + _key_needles(other.private)
    enc = encrypted_test_set(other, tmp_path / "t.csv.gpg", X, y)
    with pytest.raises(DatasetError, match="encrypted to a different key"):
        with decrypted_dataset(enc, service_keys.private):
            pytest.fail("must not enter the block")


def test_public_key_given_as_private_key(service_keys, tmp_path, data, no_leak):
    X, y = data
    enc = encrypted_test_set(service_keys, tmp_path / "t.csv.gpg", X, y)
    no_leak += _row_needles(X, y, "csv")
    with pytest.raises(DatasetError, match="public key; decryption needs the private key"):
        with decrypted_dataset(enc, service_keys.public):
            pass


@pytest.mark.parametrize("damage", ["flip_last", "flip_middle", "flip_session_key"])
def test_corrupted(damage, service_keys, tmp_path, data, no_leak):
    X, y = data
    no_leak += _row_needles(X, y, "csv")
    enc = encrypted_test_set(service_keys, tmp_path / "t.csv.gpg", X, y)
    b = bytearray(enc.read_bytes())
    pos = {"flip_last": len(b) - 5, "flip_middle": len(b) // 2, "flip_session_key": 40}[damage]
    b[pos] ^= 0x5A
    enc.write_bytes(bytes(b))
    with pytest.raises(DatasetError, match="corrupted|truncated|different key") as err:
        with decrypted_dataset(enc, service_keys.private):
            pytest.fail("must not enter the block")
    assert str(enc) in str(err.value)


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.2])
def test_truncated(keep, service_keys, tmp_path, data, no_leak):
    X, y = data
    no_leak += _row_needles(X, y, "csv")
    enc = encrypted_test_set(service_keys, tmp_path / "t.csv.gpg", X, y)
    b = enc.read_bytes()
    enc.write_bytes(b[: int(len(b) * keep)])
    with pytest.raises(DatasetError, match="truncated|corrupted"):
        with decrypted_dataset(enc, service_keys.private):
            pytest.fail("must not enter the block")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "npz"])
def test_plaintext_given_as_ciphertext(fmt, service_keys, tmp_path, data, no_leak, temp_tracker):
    X, y = data
    plain = write_test_set(tmp_path / f"t.{fmt}", X, y)
    with pytest.raises(DatasetError, match="not an OpenPGP encrypted file"):
        with decrypted_dataset(plain, service_keys.private):
            pytest.fail("must not enter the block")
    assert temp_tracker.created == [], "refused before anything was decrypted or written"
    no_leak += _row_needles(X, y, fmt)
    plain.unlink()


def test_empty_and_missing_files(service_keys, tmp_path, temp_tracker):
    (tmp_path / "empty.csv.gpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        with decrypted_dataset(tmp_path / "empty.csv.gpg", service_keys.private):
            pass
    with pytest.raises(DatasetError, match="not found"):
        with decrypted_dataset(tmp_path / "missing.csv.gpg", service_keys.private):
            pass
    with pytest.raises(DatasetError, match="not found"):
        dataset_id(tmp_path / "missing.csv.gpg") if False else encrypt_dataset(
            service_keys.public, tmp_path / "missing.csv", tmp_path / "x.gpg")
    with pytest.raises(DatasetError, match="rows must be a positive integer"):
        with decrypted_dataset(tmp_path / "empty.csv.gpg", service_keys.private, rows=0):
            pass
    assert temp_tracker.leftovers() == []


def test_exception_in_block_wipes(service_keys, tmp_path, data, no_leak):
    X, y = data
    no_leak += _row_needles(X, y, "csv")
    enc = encrypted_test_set(service_keys, tmp_path / "t.csv.gpg", X, y)
    with pytest.raises(RuntimeError, match="model crashed"):
        with decrypted_dataset(enc, service_keys.private) as ds:
            assert ds.features_path.exists()
            raise RuntimeError("model crashed")


def test_fallback_dir_when_no_tmpfs(service_keys, tmp_path, data, no_leak):
    """Without /dev/shm the private dir goes elsewhere; files are overwritten then removed."""
    X, y = data
    no_leak += _row_needles(X, y, "csv")
    enc = encrypted_test_set(service_keys, tmp_path / "t.csv.gpg", X, y)
    base = tmp_path / "disk"
    base.mkdir()
    with decrypted_dataset(enc, service_keys.private, tmp_dir=base) as ds:
        assert ds.features_path.parent.parent == base
    assert os.listdir(base) == []
    no_leak  # scanned at teardown
    assert scan_dirs_for(_row_needles(X, y, "csv"), [base]) == []



def test_fallback_dir_plaintext_is_synced_before_unlink(service_keys, tmp_path, data, monkeypatch):
    """Off tmpfs, the zeros over the plaintext must reach the disk before the file goes."""
    X, y = data
    enc = encrypted_test_set(service_keys, tmp_path / "t.csv.gpg", X, y)
    base = tmp_path / "disk"
    base.mkdir()
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with decrypted_dataset(enc, service_keys.private, tmp_dir=base) as ds:
        assert not (ds.features_path.parent / "plaintext").exists()
        assert any(p.endswith("/plaintext") for p in synced), synced
    assert os.listdir(base) == []

def test_encryption_parameters(service_keys, tmp_path, data):
    """AES-256, binary (not armored), not compressed, integrity-protected (checked by gpg)."""
    X, y = data
    enc = encrypted_test_set(service_keys, tmp_path / "t.csv.gpg", X, y)
    raw = enc.read_bytes()
    assert not raw.startswith(b"-----BEGIN"), "must be binary, not ASCII-armored"
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        subprocess.run(["gpg", "--batch", "--import", str(service_keys.private)], env=env,
                       check=True, capture_output=True)
        out = subprocess.run(["gpg", "--batch", "--status-fd", "1", "--list-packets", str(enc)],
                             env=env, capture_output=True, text=True)
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
    listing = out.stdout
    assert "DECRYPTION_INFO 2 9" in listing, listing  # MDC (2), cipher algo 9 = AES-256
    assert "compressed packet" not in listing, "compression must be off"
    assert ":literal data packet:" in listing
    # two encryptions of the same plaintext differ (fresh session key): different ids
    enc2 = encrypted_test_set(service_keys, tmp_path / "t2.csv.gpg", X, y)
    assert dataset_id(enc2) != dataset_id(enc)


def test_encrypt_refuses_bad_inputs(service_keys, tmp_path, data):
    X, y = data
    enc = encrypted_test_set(service_keys, tmp_path / "t.csv.gpg", X, y)
    with pytest.raises(DatasetError, match="already an OpenPGP message"):
        encrypt_dataset(service_keys.public, enc, tmp_path / "twice.gpg")
    plain = write_test_set(tmp_path / "p.csv", X, y)
    with pytest.raises(DatasetError, match="private key"):
        encrypt_dataset(service_keys.private, plain, tmp_path / "p.csv.gpg")
    with pytest.raises(DatasetError, match="no OpenPGP public key"):
        encrypt_dataset(plain, plain, tmp_path / "p.csv.gpg")
    assert not (tmp_path / "p.csv.gpg").exists() and not (tmp_path / "p.csv.gpg.tmp").exists()


def test_malformed_csv_names_the_line(service_keys, tmp_path):
    plain = tmp_path / "bad.csv"
    plain.write_text("a,b,label\n1,2,0\n3,4\n5,6,1\n")
    with pytest.raises(DatasetError, match=r"bad.csv: line 3: 2 fields, the header has 3"):
        check_plaintext(plain)
    enc = tmp_path / "bad.csv.gpg"
    encrypt_dataset(service_keys.public, plain, enc)
    with pytest.raises(DatasetError, match=r"bad.csv.gpg: line 3: 2 fields"):
        with decrypted_dataset(enc, service_keys.private):
            pass
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"a": 1, "label": 0}\n{"a": 2}\n')
    with pytest.raises(DatasetError, match=r"line 2: label field 'label' missing"):
        check_plaintext(jl)
    jl.write_text('{"a": 1, "label": 0}\nnot json\n')
    with pytest.raises(DatasetError, match=r"line 2: not valid JSON"):
        check_plaintext(jl)
    empty_label = tmp_path / "el.csv"
    empty_label.write_text("a,label\n1,\n")
    with pytest.raises(DatasetError, match=r"line 2: empty label"):
        check_plaintext(empty_label)
    assert check_plaintext(write_test_set(tmp_path / "ok.csv", np.ones((4, 2)), np.arange(4))) == ("csv", 4)


def test_string_and_float_labels(service_keys, tmp_path):
    plain = tmp_path / "s.csv"
    plain.write_text('text,label\n"hello, world",spam\nbye,ham\n')
    enc = tmp_path / "s.csv.gpg"
    encrypt_dataset(service_keys.public, plain, enc)
    with decrypted_dataset(enc, service_keys.private) as ds:
        order = ds.source_rows.tolist()
        assert ds.labels.tolist() == [["spam", "ham"][i] for i in order]
        assert list(csv.reader(ds.features_path.open())) == [["text"]] + [[["hello, world"], ["bye"]][i][0:1] for i in order]
    plain.write_text("x,label\n1,0.5\n2,1.5\n")
    encrypt_dataset(service_keys.public, plain, enc)
    with decrypted_dataset(enc, service_keys.private) as ds:
        assert ds.labels.dtype.kind == "f" and ds.labels.tolist() == [[0.5, 1.5][i] for i in ds.source_rows]


def test_passphrase_key_round_trip(service_keys_with_passphrase, tmp_path, data, no_leak):
    X, y = data
    keys = service_keys_with_passphrase
    no_leak += _row_needles(X, y, "npz") + _key_needles(keys.private) + [keys.passphrase.encode()]
    enc = encrypted_test_set(keys, tmp_path / "t.npz.gpg", X, y)
    with decrypted_dataset(enc, keys.private, passphrase=keys.passphrase, rows=5) as ds:
        assert ds.labels.tolist() == y[ds.source_rows].tolist() and ds.n_rows == 5


def test_cli_dataset_commands(service_keys, tmp_path, data, capsys, monkeypatch):
    X, y = data
    plain = write_test_set(tmp_path / "t.csv", X, y)
    enc = tmp_path / "t.csv.gpg"
    assert easeml(["dataset", "encrypt", "--key", str(service_keys.public), str(plain), str(enc)]) == 0
    out = capsys.readouterr().out
    assert f"{N} rows" in out and dataset_id(enc) in out
    assert easeml(["dataset", "id", str(enc)]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(enc.read_bytes()).hexdigest()

    monkeypatch.setenv("EASEML_PRIVATE_KEY", str(service_keys.private))
    out_dir = tmp_path / "debug"
    assert easeml(["dataset", "decrypt", str(enc), "--out-dir", str(out_dir), "--rows", "7"]) == 0
    cap = capsys.readouterr()
    assert "7 rows" in cap.out
    assert not any(n.decode() in cap.out + cap.err for n in _row_needles(X, y, "csv"))
    assert stat.S_IMODE((out_dir / "features.csv").stat().st_mode) == 0o600
    feats = list(csv.reader(io.StringIO((out_dir / "features.csv").read_text())))
    assert feats[0] == ["x0", "x1", "x2"] and len(feats) == 8
    used = [int(v) - 1 for v in (out_dir / "rows.txt").read_text().split()]
    with decrypted_dataset(enc, service_keys.private) as ds:
        assert used == ds.source_rows.tolist()[:7]  # what a 7-row evaluation uses, in order
    assert (out_dir / "labels.txt").read_text().split() == [str(v) for v in y[used]]
    np.testing.assert_array_equal(np.array(feats[1:], dtype=float), X[used])

    # user errors: clear message naming the file, exit 1, no traceback
    assert easeml(["dataset", "decrypt", "--key", str(service_keys.private), str(plain),
                   "--out-dir", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert str(plain) in err and "not an OpenPGP encrypted file" in err and "Traceback" not in err
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert easeml(["dataset", "encrypt", "--key", str(service_keys.public), str(bad), str(tmp_path / "b.gpg")]) == 1
    assert "label column 'label'" in capsys.readouterr().err
    assert not (tmp_path / "b.gpg").exists()


LABEL_KINDS = {
    "digits": lambda rng, i: str(int(rng.integers(0, 4))),
    "widths": lambda rng, i: str(int(rng.integers(0, 4)) if i < 25 else int(rng.integers(0, 200))),
    "zeros": lambda rng, i: f"{int(rng.integers(0, 100)):03d}",
    "negative": lambda rng, i: str(int(rng.integers(-3, 3))),
    "words": lambda rng, i: ["cat", "dog", "emu"][int(rng.integers(0, 3))],
    "mixed": lambda rng, i: "7" if i < 40 else "x7",
    "floats": lambda rng, i: f"{rng.normal():.2f}",
}


@pytest.mark.parametrize("label_kind", sorted(LABEL_KINDS))
@pytest.mark.parametrize("label_pos", [0, 4])
@pytest.mark.parametrize("rows", [None, 45])
def test_fast_csv_labels_match_csv_module(label_kind, label_pos, rows, tmp_path, monkeypatch):
    from easeml_buildbot.custody import dataset as dsm

    monkeypatch.setattr(dsm, "_FAST_CHUNK", 61)  # many chunks: label kinds may differ per chunk
    rng = np.random.default_rng(7)
    lines = ["label,a,b,c,d" if label_pos == 0 else "a,b,c,d,label"]
    for i in range(50):
        vals = [f"{v:.2f}" for v in rng.normal(size=4)]
        vals.insert(label_pos, LABEL_KINDS[label_kind](rng, i))
        lines.append(",".join(vals))
    plain = tmp_path / "p.csv"
    plain.write_text("\n".join(lines) + "\n")
    fast, _, fast_rows = dsm._split_csv(plain, tmp_path / "fast.csv", "label", rows, plain, 99)
    slow, _, slow_rows = dsm._split_csv_slow(plain, tmp_path / "slow.csv", "label", rows, plain, 99)
    assert fast_rows.tolist() == slow_rows.tolist()
    assert fast.dtype == slow.dtype and fast.tolist() == slow.tolist()
    assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "slow.csv").read_bytes()


@pytest.mark.parametrize("label_pos", [0, 2, 4])
@pytest.mark.parametrize("variant", ["plain", "no_final_newline", "crlf", "quoted", "blank_line"])
@pytest.mark.parametrize("rows", [None, 1, 33, 50])
def test_fast_csv_path_matches_csv_module(label_pos, variant, rows, tmp_path, monkeypatch):
    """The numpy fast path and the csv module give identical features and labels."""
    from easeml_buildbot.custody import dataset as dsm

    monkeypatch.setattr(dsm, "_FAST_CHUNK", 97)  # many chunk boundaries inside lines
    rng = np.random.default_rng(label_pos * 100 + (rows or 0))
    header = ["a", "b", "c", "d", "e"]
    header[label_pos] = "label"
    lines = [",".join(header)]
    for i in range(50):
        vals = [f"{v:.3f}" for v in rng.normal(size=5)]
        vals[label_pos] = str(int(rng.integers(0, 4)))
        if variant == "quoted" and i == 20:
            vals[(label_pos + 1) % 5] = '"1,5"'
        lines.append(",".join(vals))
    if variant == "blank_line":
        lines.insert(10, "")
    text = "\r\n".join(lines) if variant == "crlf" else "\n".join(lines)
    if variant != "no_final_newline":
        text += "\r\n" if variant == "crlf" else "\n"
    plain = tmp_path / "p.csv"
    plain.write_bytes(text.encode())
    slow = dsm._split_csv_slow
    fallbacks = []
    monkeypatch.setattr(dsm, "_split_csv_slow", lambda *a: fallbacks.append(1) or slow(*a))
    fast_labels, fast_names, fast_rows = dsm._split_csv(plain, tmp_path / "fast.csv", "label", rows, plain, 5)
    slow_labels, slow_names, slow_rows = slow(plain, tmp_path / "slow.csv", "label", rows, plain, 5)
    assert fast_rows.tolist() == slow_rows.tolist()
    if variant in ("plain", "no_final_newline"):
        assert fallbacks == [], "a plain CSV must take the fast path"
    elif rows is None or (variant != "blank_line" and variant != "quoted") or rows > 20:
        assert fallbacks == [1]
    assert fast_names == slow_names
    assert fast_labels.dtype == slow_labels.dtype and fast_labels.tolist() == slow_labels.tolist()
    read = lambda p: list(csv.reader(p.open(newline="")))  # noqa: E731
    assert read(tmp_path / "fast.csv") == read(tmp_path / "slow.csv")
    assert len(fast_labels) == (rows or 50)


def test_kill_9_mid_evaluation_leaves_nothing_for_long(service_keys, tmp_path, data):
    """A worker killed inside the block skips every finally; the next decryption sweeps it."""
    import signal
    import sys

    from easeml_buildbot.custody.gpghome import sweep_stale

    X, y = data
    enc = encrypted_test_set(service_keys, tmp_path / "t.csv.gpg", X, y)
    base = tmp_path / "shm"
    base.mkdir()
    code = (
        "import sys, time\n"
        "from easeml_buildbot.custody.dataset import decrypted_dataset\n"
        f"with decrypted_dataset({str(enc)!r}, {str(service_keys.private)!r}, tmp_dir={str(base)!r}) as ds:\n"
        "    print(ds.features_path, flush=True)\n"
        "    time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    features = Path(child.stdout.readline().strip())
    assert features.is_file()
    # a live owner's directory is never swept
    assert sweep_stale(base) == [] and features.is_file()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    assert features.is_file(), "kill -9 skipped the wipe (this is what the sweep is for)"
    with decrypted_dataset(enc, service_keys.private, tmp_dir=base, rows=3) as ds:
        assert ds.n_rows == 3 and not features.parent.exists()
    assert os.listdir(base) == []
    assert scan_dirs_for(_row_needles(X, y, "csv"), [base]) == []


def test_small_tmpfs_falls_back_to_disk(service_keys, tmp_path, data, monkeypatch):
    """A 64 MiB Docker /dev/shm must not fail a large test set: it falls back to the temp dir."""
    from easeml_buildbot.custody import gpghome

    X, y = data
    enc = encrypted_test_set(service_keys, tmp_path / "t.csv.gpg", X, y)
    real = os.statvfs

    class Tiny:
        def __init__(self, st):
            self.f_bavail, self.f_frsize = 10, 4096

    monkeypatch.setattr(gpghome.os, "statvfs", lambda p: Tiny(real(p)) if str(p) == "/dev/shm" else real(p))
    monkeypatch.setattr(gpghome.tempfile, "tempdir", str(tmp_path))
    with decrypted_dataset(enc, service_keys.private) as ds:
        assert not str(ds.features_path).startswith("/dev/shm/")
        assert ds.features_path.parent.parent == tmp_path
    assert sorted(os.listdir(tmp_path)) == ["t.csv.gpg"]


@pytest.mark.parametrize("chunk", [29, 61, 97, 1 << 20])
@pytest.mark.parametrize("slack", [0, 1 << 16])
def test_fast_csv_every_row_count(chunk, slack, tmp_path, monkeypatch):
    """rows=N yields exactly the first N rows of the full order whatever the chunk
    boundaries and however often the candidates are pruned while streaming."""
    from easeml_buildbot.custody import dataset as dsm
    from easeml_buildbot.custody import rows as rows_mod

    monkeypatch.setattr(dsm, "_FAST_CHUNK", chunk)
    monkeypatch.setattr(rows_mod, "_PRUNE_SLACK", slack)
    plain = tmp_path / "p.csv"
    plain.write_text("a,label\n" + "".join(f"{i * 7},{i % 5}\n" for i in range(50)))
    _, _, full = dsm._split_csv(plain, tmp_path / "f.csv", "label", None, plain, 12345)
    full = full.tolist()
    assert sorted(full) == list(range(50)) and full != list(range(50))
    for n in range(1, 51):
        labels, _, used = dsm._split_csv(plain, tmp_path / "f.csv", "label", n, plain, 12345)
        assert used.tolist() == full[:n]
        assert labels.tolist() == [i % 5 for i in full[:n]]
        assert (tmp_path / "f.csv").read_text() == "a\n" + "".join(f"{i * 7}\n" for i in full[:n])
    with pytest.raises(DatasetError, match="needs 51 samples, the test set has 50"):
        dsm.split_plaintext(plain, tmp_path / "f.csv", fmt="csv", label_column="label", rows=51,
                            order_key=1)


def test_installed_easeml_entry_point(service_keys, tmp_path, data):
    """The real ``easeml`` console script dispatches to the custody commands."""
    import shutil
    import sys

    X, y = data
    enc = encrypted_test_set(service_keys, tmp_path / "t.csv.gpg", X, y)
    exe = shutil.which("easeml", path=str(Path(sys.executable).parent)) or "easeml"
    out = subprocess.run([exe, "dataset", "id", str(enc)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == dataset_id(enc)
