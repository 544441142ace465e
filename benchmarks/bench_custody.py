"""Custody benchmarks: decrypt + split a 1M-row test set vs bare ``gpg --decrypt``; ledger throughput.

    .venv/bin/python benchmarks/bench_custody.py [--rows 1000000] [--ledger-uses 2000]

Prints the time of ``decrypted_dataset`` (key import, gpg decrypt to tmpfs, CSV split into
features + labels, wipe) next to a bare ``gpg --decrypt`` of the same file in the same run,
and their ratio; then reserve+commit throughput on a SQLite ledger.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from easeml_buildbot.custody.dataset import dataset_id, decrypted_dataset, encrypt_dataset
from easeml_buildbot.custody.gpghome import secure_tmp_base
from easeml_buildbot.custody.keys import create_keypair
from easeml_buildbot.custody.ledger import Ledger


def make_csv(path: Path, rows: int, features: int = 10, seed: int = 0) -> None:
    """A test set of ``rows`` rows: ``features`` numeric columns and an integer label."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="ascii") as fh:
        fh.write(",".join([f"f{i}" for i in range(features)] + ["label"]) + "\n")
        chunk = 100_000
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            X = rng.normal(size=(n, features))
            y = rng.integers(0, 2, size=n)
            block = np.column_stack([X, y])
            fmt = ",".join(["%.5f"] * features + ["%d"])
            np.savetxt(fh, block, fmt=fmt)


def bare_gpg_decrypt(enc: Path, priv: Path, out_dir: Path) -> float:
    """Seconds for ``gpg --decrypt`` alone (key already imported, output on the same tmpfs)."""
    home = Path(tempfile.mkdtemp(prefix="easeml-gnupg-", dir=secure_tmp_base()))
    env = {**os.environ, "GNUPGHOME": str(home)}
    out = out_dir / "bare-plaintext"
    try:
        subprocess.run(["gpg", "--batch", "--import", str(priv)], env=env, check=True, capture_output=True)
        subprocess.run(["gpg", "--batch", "--decrypt", "--output", "/dev/null", str(enc)], env=env,
                       check=True, capture_output=True)  # warm the agent, as our path does per call
        t0 = time.perf_counter()
        subprocess.run(["gpg", "--batch", "--yes", "--decrypt", "--output", str(out), str(enc)],
                       env=env, check=True, capture_output=True)
        return time.perf_counter() - t0
    finally:
        out.unlink(missing_ok=True)
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
        shutil.rmtree(home, ignore_errors=True)


def bench_decrypt(rows: int, repeats: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="easeml-bench-"))
    try:
        pub, priv = create_keypair(work / "keys", passphrase=None)
        plain = work / "test.csv"
        t0 = time.perf_counter()
        make_csv(plain, rows)
        gen = time.perf_counter() - t0
        size = plain.stat().st_size
        enc = work / "test.csv.gpg"
        t0 = time.perf_counter()
        encrypt_dataset(pub, plain, enc)
        t_enc = time.perf_counter() - t0
        plain.unlink()
        t0 = time.perf_counter()
        dataset_id(enc)
        t_id = time.perf_counter() - t0
        print(f"test set: {rows:,} rows x 10 features + label, {size / 1e6:.1f} MB plaintext, "
              f"{enc.stat().st_size / 1e6:.1f} MB ciphertext (generated in {gen:.1f} s)")
        print(f"encrypt_dataset:                 {t_enc:7.3f} s")
        print(f"dataset_id (sha256):             {t_id:7.3f} s")
        ours, bare = [], []
        shm = secure_tmp_base() or Path(tempfile.gettempdir())
        for _ in range(repeats):
            bare.append(bare_gpg_decrypt(enc, priv, shm))
            t0 = time.perf_counter()
            with decrypted_dataset(enc, priv) as ds:
                assert ds.n_rows == rows
            ours.append(time.perf_counter() - t0)
        b, o = min(bare), min(ours)
        print(f"bare gpg --decrypt (best of {repeats}):  {b:7.3f} s")
        print(f"decrypt + split (best of {repeats}):     {o:7.3f} s")
        print(f"ratio decrypt+split / bare gpg:  {o / b:7.2f}x")
        with decrypted_dataset(enc, priv, rows=min(rows, 10_000)) as ds:
            pass
        t0 = time.perf_counter()
        with decrypted_dataset(enc, priv, rows=min(rows, 10_000)) as ds:
            assert ds.n_rows == min(rows, 10_000)
        print(f"decrypt + select 10,000 rows:    {time.perf_counter() - t0:7.3f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_ledger(uses: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="easeml-bench-"))
    try:
        with Ledger(f"sqlite:///{work / 'ledger.sqlite'}") as led:
            led.reserve("bench/warmup", "0" * 64, 1, "full")
            t0 = time.perf_counter()
            for i in range(uses):
                ds = f"{i // 100:064x}"  # 100 uses per test set
                r = led.reserve("bench/repo", ds, 100, "full", commit=f"{i:040x}", build=str(i))
                led.commit(r.use_id, "fail" if i % 3 else "pass", result={"n": 0.5, "i": i}, notified=["a@x"])
            dt = time.perf_counter() - t0
        print(f"SQLite ledger: {uses} reserve+commit pairs in {dt:.2f} s = {uses / dt:,.0f} pairs/s "
              f"({1000 * dt / uses:.2f} ms per use, synchronous=FULL, WAL)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ledger-uses", type=int, default=1000)
    args = ap.parse_args(argv)
    bench_decrypt(args.rows, args.repeats)
    bench_ledger(args.ledger_uses)
    return 0


if __name__ == "__main__":
    sys.exit(main())
