"""`edge-keys`: make and hand out the CURVE keys of edge nodes and their subscribers.

    edge-keys generate NAME [--dir DIR]                 NAME.key (public) + NAME.key_secret (0600)
    edge-keys show FILE|DIR                             a key file's public key / an allow-list's keys
    edge-keys allow PUBLIC_KEY_FILE --allow-dir DIR [--name NAME]
                                                        admit a client's key to a node's allow-list

The library side is edge/security.py; the operator's guide docs/security.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.security import (PUBLIC_SUFFIX, SecurityError, allow_key, generate_keypair, load_public, load_secret,
                           read_allow_list, read_key_file)

EPILOG = """\
how it fits together (one node, one subscriber):

  on the edge node                        on the subscriber (PLC/MES gateway)
  ----------------                        -----------------------------------
  edge-keys generate line1-edge           edge-keys generate mes-gateway
    -> keys/line1-edge.key_secret           -> keys/mes-gateway.key_secret  (stays here)
    -> keys/line1-edge.key  ------copy---->    keys/line1-edge.key          (the node's PUBLIC key)
  edge-keys allow mes-gateway.key  <-copy-- keys/mes-gateway.key            (the subscriber's PUBLIC key)
      --allow-dir /etc/edge/allowed

  edge-run ... --alerts-addr tcp://0.0.0.0:5560 \\
      --curve-secret keys/line1-edge.key_secret --curve-allow /etc/edge/allowed
                                          edge-alerts --connect tcp://line1-edge:5560 \\
                                              --curve-secret keys/mes-gateway.key_secret \\
                                              --curve-server-key keys/line1-edge.key

flags of edge-run and edge-alerts:
  --curve-secret FILE      own secret key NAME.key_secret (mode 0600; never copied anywhere)
  --curve-server-key FILE  on the connecting side: the node's public key NODE.key; only a server
                           holding the matching secret is trusted (no impostor node)
  --curve-allow DIR        on the binding side: the allow-list, a directory of client public keys
                           (*.key); a client whose key is not there receives nothing and is logged
                           with its key. Re-read when it changes: no restart needed to add a key
  --insecure               no CURVE at all (anyone on the network can read and forge); logged as a
                           WARNING. Isolated test networks only

Stages on two hosts: the receiving host (binds --frames-addr) is the server, with --curve-secret and
--curve-allow holding the camera host's public key; the camera host passes --curve-secret and
--curve-server-key with the receiving host's public key.

Public keys (.key) may travel by any channel whose integrity you trust; compare the key that
'edge-keys show' prints on both machines. Secret keys (.key_secret) never leave their machine.
Rotation and the threat model: docs/security.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-keys", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Make and distribute ZeroMQ CURVE keys for edge-inspect nodes and subscribers: "
                    "encryption, server authentication and an allow-list of client keys.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    g = sub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (secret, mode 0600)",
                       description="Write a new keypair; never overwrites an existing key.")
    g.add_argument("name", metavar="NAME", help="what the key belongs to, e.g. line1-edge or mes-gateway")
    g.add_argument("--dir", default="keys", type=Path,
                   help="where to write the files (default: ./keys, made mode 0700)")
    s = sub.add_parser("show", help="print the public key of a key file, or the keys of an allow-list directory")
    s.add_argument("path", metavar="FILE|DIR", type=Path)
    a = sub.add_parser("allow", help="copy a client's PUBLIC key file into a node's allow-list directory",
                       description="Admit a client: copies its public key file into the allow-list directory "
                                   "(created if missing). Running nodes pick it up at the next connection.")
    a.add_argument("public_file", metavar="PUBLIC_KEY_FILE", type=Path, help="the client's NAME.key")
    a.add_argument("--allow-dir", required=True, type=Path, metavar="DIR", help="the node's --curve-allow directory")
    a.add_argument("--name", default=None, help="file name in the allow-list (default: that of PUBLIC_KEY_FILE)")
    return p


def _generate(args) -> None:
    public_file, secret_file = generate_keypair(args.dir, args.name)
    key = load_public(public_file).decode("ascii")
    print(f"public key  {public_file}  (give this file to the other side)")
    print(f"secret key  {secret_file}  (mode 0600: never copy it off this machine)")
    print(f"public key: {key}")
    print(f"""
next steps, if {args.name} is
  an edge node:  edge-run ... --curve-secret {secret_file} --curve-allow ALLOW_DIR
                 and give {public_file.name} to every subscriber (their --curve-server-key)
  a subscriber:  give {public_file.name} to the node's operator, who runs
                   edge-keys allow {public_file.name} --allow-dir ALLOW_DIR
                 then edge-alerts ... --curve-secret {secret_file} --curve-server-key NODE.key""")


def _show(args) -> None:
    path: Path = args.path
    if path.is_dir():
        keys = read_allow_list(path)
        if not keys:
            print(f"{path}: no *{PUBLIC_SUFFIX} files (an allow-list that admits nobody)")
        for key, name in sorted(keys.items(), key=lambda kv: kv[1]):
            print(f"{name}\t{key.decode('ascii')}")
        return
    public, secret = read_key_file(path)
    if secret is not None:
        load_secret(path)   # checks mode and consistency too
        print(f"{public.decode('ascii')}\t(from the SECRET key file {path}: keep it on this machine)")
    else:
        print(public.decode("ascii"))


def _allow(args) -> None:
    key = load_public(args.public_file).decode("ascii")
    before = read_allow_list(args.allow_dir) if args.allow_dir.is_dir() else {}
    dst = allow_key(args.public_file, args.allow_dir, args.name)
    if key.encode() in before:
        print(f"{key} is already allowed as {dst}: nothing to do")
        return
    print(f"allowed {key} as {dst}")
    print("running nodes using this directory admit it at its next connection (no restart needed)")


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        {"generate": _generate, "show": _show, "allow": _allow}[args.command](args)
    except (SecurityError, OSError) as e:
        print(f"edge-keys {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
