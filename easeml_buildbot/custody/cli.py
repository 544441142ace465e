"""``easeml keys``, ``easeml dataset`` and ``easeml ledger`` sub-commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from easeml_buildbot.custody import dataset as ds_mod
from easeml_buildbot.custody import keys as keys_mod
from easeml_buildbot.custody.ledger import Ledger, format_table, format_uses, normalize_url


def _fail(message: str) -> int:
    print(f"easeml: error: {message}", file=sys.stderr)
    return 1


def _keys_create(args: argparse.Namespace) -> int:
    try:
        passphrase = keys_mod.resolve_passphrase(args.passphrase_file, args.no_passphrase, required=True)
        pub, priv = keys_mod.create_keypair(args.out, name=args.name, email=args.email,
                                            passphrase=passphrase, key_type=args.key_type)
        fpr = keys_mod.key_fingerprint(pub)
    except keys_mod.KeysError as exc:
        return _fail(str(exc))
    print(f"public key  (publish; repositories encrypt test sets to it): {pub}")
    print(f"private key (workers only, mode 0600):                     {priv}")
    print(f"fingerprint: {fpr}")
    print("protected by a passphrase" if passphrase else "not protected by a passphrase")
    return 0


def _find_config(explicit: str | None, output: Path) -> Path | None:
    """The repository's ``.easeml.yml``: ``--config``, else the nearest one above the output
    file or the current directory (up to the repository root, the directory holding ``.git``)."""
    from easeml_buildbot.config import CONFIG_FILE

    if explicit:
        return Path(explicit)
    cwd = Path.cwd()
    for start in (output.absolute().parent, cwd):
        for d in (start, *start.parents):
            if (d / CONFIG_FILE).is_file():
                found = d / CONFIG_FILE
                return found.relative_to(cwd) if found.is_relative_to(cwd) else found
            if (d / ".git").exists():
                break
    return None


def _dataset_encrypt(args: argparse.Namespace) -> int:
    from easeml_buildbot.config import ConfigError, parse_config
    from easeml_buildbot.estimator.samples import SampleSizeError

    out = Path(args.output)
    label_column = args.label_column or "label"
    needed = None
    cfg_path = None
    try:
        cfg_path = _find_config(args.config, out)
        if cfg_path is not None:
            try:
                text = cfg_path.read_text()
            except OSError as exc:
                return _fail(f"{cfg_path}: cannot read: {exc.strerror or exc}")
            cfg = parse_config(text, source=str(cfg_path))
            if args.label_column and args.label_column != cfg.label_column:
                print(f"note: --label-column {args.label_column} overrides label_column "
                      f"'{cfg.label_column}' of {cfg_path}", file=sys.stderr)

            def names(path: str) -> bool:
                return Path(path) == out or (cfg_path.parent / path).absolute() == out.absolute()

            if cfg.labels and names(cfg.labels):
                # labels on demand: the owners' labels file (id,label rows, as few as asked for)
                label_column = args.label_column or cfg.label_column
                needed = None
            else:
                # labels on demand: the test set's split column is the row id
                label_column = args.label_column or cfg.split_column
                needed = (cfg.required_samples().rows, cfg)
            if needed and not names(cfg.dataset):
                print(f"note: {cfg_path} reads the test set from dataset: {cfg.dataset}, not {out}",
                      file=sys.stderr)
        if args.no_check:
            if needed:
                print(f"note: --no-check: the rows are not counted against the {needed[0]} "
                      f"{cfg_path} needs", file=sys.stderr)
        else:
            fmt, n = ds_mod.check_plaintext(args.input, label_column=label_column)
            print(f"{args.input}: {fmt}, {n} rows, label column '{label_column}'")
            if needed and n < needed[0]:
                rows, cfg = needed
                what = (f"the condition '{cfg.condition_text}' at reliability {cfg.reliability} over "
                        f"{cfg.steps} steps (adaptivity {cfg.adaptivity}) in {cfg_path} needs {rows:,} rows")
                if not args.allow_small:
                    return _fail(f"{args.input}: {n:,} rows, but {what}; collect more samples, relax the "
                                 "condition (easeml samples .easeml.yml), or pass --allow-small to encrypt it "
                                 "anyway (the service will then refuse to evaluate with it)")
                print(f"warning: --allow-small: {n:,} rows, but {what}", file=sys.stderr)
        if out.parent and not out.parent.is_dir():
            if out.parent.exists():
                return _fail(f"{out.parent}: cannot create the output folder: a file of that name exists")
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                return _fail(f"{out.parent}: cannot create the output folder: {exc.strerror or exc}")
        ds_id = ds_mod.encrypt_dataset(args.key, args.input, args.output)
    except (ds_mod.DatasetError, ConfigError) as exc:
        return _fail(str(exc))
    except SampleSizeError as exc:
        return _fail(f"{cfg_path}: {exc}")
    except OSError as exc:
        return _fail(f"{getattr(exc, 'filename', None) or args.input}: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - gpg and friends: a message, never a traceback
        return _fail(f"{args.input} -> {args.output}: {type(exc).__name__}: {exc}")
    print(f"wrote {args.output}")
    print(f"dataset id: {ds_id}")
    return 0


def _dataset_decrypt(args: argparse.Namespace) -> int:
    try:
        passphrase = keys_mod.resolve_passphrase(args.passphrase_file, False, required=False)
        key = args.key or keys_mod.default_private_key_path()
        with ds_mod.decrypted_dataset(args.input, key, passphrase=passphrase,
                                      label_column=args.label_column, rows=args.rows) as ds:
            feats, labels = ds_mod.write_decrypted(ds, args.out_dir)
            print(f"{ds.n_rows} rows ({ds.format}), dataset id {ds.dataset_id}")
    except (ds_mod.DatasetError, keys_mod.KeysError) as exc:
        return _fail(str(exc))
    print(f"features: {feats}")
    print(f"labels:   {labels}  (keep private: never give labels to a model)")
    print(f"rows in the service's order; {labels.parent / 'rows.txt'} gives each one's row number in the file")
    return 0


def _dataset_id(args: argparse.Namespace) -> int:
    try:
        print(ds_mod.dataset_id(args.file))
    except ds_mod.DatasetError as exc:
        return _fail(str(exc))
    return 0


def _ledger_show(args: argparse.Namespace) -> int:
    try:
        with Ledger(args.url) as led:
            entries = led.entries(repo=args.repo)
            if args.dataset:
                chosen = [e for e in entries if e.dataset_id.startswith(args.dataset)]
                if len(chosen) != 1:
                    return _fail(f"--dataset {args.dataset}: matches {len(chosen)} test sets"
                                 + ("" if args.repo else " (add --repo)"))
                print(format_table(chosen))
                print()
                print(format_uses(led.uses(chosen[0].repo, chosen[0].dataset_id)))
                return 0
    except Exception as exc:  # noqa: BLE001 - LedgerError and database errors of any driver
        return _fail(f"ledger {normalize_url(args.url).split('@')[-1]}: {exc}")
    if not entries:
        print("no test set has been used yet" + (f" in {args.repo}" if args.repo else ""))
        return 0
    print(format_table(entries))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the custody sub-commands to the ``easeml`` parser."""
    keys = subparsers.add_parser("keys", help="the service's GnuPG key pair")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = ksub.add_parser("create", help="create the service key pair")
    create.add_argument("--out", required=True, help="directory for easeml_pub.asc and easeml_priv.asc")
    create.add_argument("--name", default=keys_mod.DEFAULT_NAME)
    create.add_argument("--email", default=keys_mod.DEFAULT_EMAIL)
    create.add_argument("--key-type", choices=("ed25519", "rsa"), default="ed25519")
    pp = create.add_mutually_exclusive_group()
    pp.add_argument("--passphrase-file", help="file whose first line is the passphrase "
                    f"(default: ${keys_mod.PASSPHRASE_ENV})")
    pp.add_argument("--no-passphrase", action="store_true", help="leave the private key unprotected")
    create.set_defaults(func=_keys_create)

    dataset = subparsers.add_parser("dataset", help="encrypted test sets")
    dsub = dataset.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    enc = dsub.add_parser("encrypt", help="encrypt a test set to the service's public key")
    enc.add_argument("--key", required=True, help="the service's public key (easeml_pub.asc)")
    enc.add_argument("--label-column", default=None,
                     help="the label column (default: label_column of .easeml.yml, else 'label')")
    enc.add_argument("--config", help="the repository's .easeml.yml (default: the nearest one above OUT "
                     "or the current directory)")
    enc.add_argument("--allow-small", action="store_true",
                     help="encrypt even if the set has fewer rows than the condition needs")
    enc.add_argument("--no-check", action="store_true", help="skip checking the plaintext format (and its size)")
    enc.add_argument("input", metavar="IN")
    enc.add_argument("output", metavar="OUT")
    enc.set_defaults(func=_dataset_encrypt)
    dec = dsub.add_parser("decrypt", help="(worker side, operators) decrypt and split a test set")
    dec.add_argument("--key", help="private key (default: $EASEML_PRIVATE_KEY or ~/.easeml/keys/easeml_priv.asc)")
    dec.add_argument("--passphrase-file", help=f"passphrase file (default: ${keys_mod.PASSPHRASE_ENV})")
    dec.add_argument("--label-column", default="label")
    dec.add_argument("--rows", type=int, default=None,
                     help="keep only the N rows an evaluation needing N rows uses (in its order)")
    dec.add_argument("--out-dir", required=True, help="where to write features.* and labels.*")
    dec.add_argument("input", metavar="IN")
    dec.set_defaults(func=_dataset_decrypt)
    did = dsub.add_parser("id", help="print a dataset's id (SHA-256 of the ciphertext)")
    did.add_argument("file", metavar="FILE")
    did.set_defaults(func=_dataset_id)

    ledger = subparsers.add_parser("ledger", help="the test-set usage ledger")
    lsub = ledger.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    show = lsub.add_parser("show", help="print uses, remaining uses and retirement per test set")
    show.add_argument("--repo", help="only this repository (owner/name)")
    show.add_argument("--dataset", metavar="ID_PREFIX", help="also list every use of this test set "
                      "(operators: shows verdicts)")
    show.add_argument("--url", help="ledger database URL (default: $EASEML_LEDGER_URL or "
                      "sqlite:///var/ledger.sqlite)")
    show.set_defaults(func=_ledger_show)
