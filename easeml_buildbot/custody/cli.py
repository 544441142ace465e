"""``easeml keys``, ``easeml dataset`` and ``easeml ledger`` sub-commands."""

from __future__ import annotations

import argparse
import sys

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


def _dataset_encrypt(args: argparse.Namespace) -> int:
    try:
        if not args.no_check:
            fmt, n = ds_mod.check_plaintext(args.input, label_column=args.label_column)
            print(f"{args.input}: {fmt}, {n} rows, label column '{args.label_column}'")
        ds_id = ds_mod.encrypt_dataset(args.key, args.input, args.output)
    except ds_mod.DatasetError as exc:
        return _fail(str(exc))
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
    enc.add_argument("--label-column", default="label")
    enc.add_argument("--no-check", action="store_true", help="skip checking the plaintext format")
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
