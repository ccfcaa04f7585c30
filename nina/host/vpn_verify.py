"""nina-vpn-verify: the OpenVPN hub's admission check, run by both server instances per connection.

  nina-vpn-verify tls-crypt-v2 <allow dir>                    (OpenVPN's --tls-crypt-v2-verify)
  nina-vpn-verify tls-verify <allow dir> <depth> <subject>    (OpenVPN's --tls-verify)

The allow directory (facts.OPENVPN_ALLOW_DIR) holds one file per on-premise organisation, named
after its slug (the certificate's CN), written by the VPN host's delivery (`allow_entry`):

    cert-sha256 <SHA-256 of the organisation's current VPN client certificate, hex>
    tls-crypt-v2 <id of its current tls-crypt-v2 client key (nina.tlscrypt.key_id)>

tls-crypt-v2: before any TLS, OpenVPN hands over the client key's metadata (authenticated by the
server key, so a client cannot forge it) in the file $metadata_file, type $metadata_type. It must
be nina's (`nina-fl <slug> <key id>`, type 0 "user") and name the key id in <allow dir>/<slug>: a
key of a replaced kit, or of an organisation no longer in the config, is refused before TLS.

tls-verify: for the client certificate (depth 0), the CN must name a file in the allow directory
whose cert-sha256 equals $tls_digest_sha256_0: a certificate of a replaced kit is refused even
though the CA signed it and an organisation of that name is still admitted. Certificates above
the leaf (depth > 0) are OpenVPN's own chain check (`ca`), accepted here.

The delivery changes these files in place (a "hot" directory: nothing restarts, and the client
named by a changed or removed file is disconnected), so a replaced or removed organisation is
refused at once. Exit 0 admits, 1 refuses (one line on stderr, which OpenVPN logs), 2 bad usage.
Runs as OpenVPN's unprivileged user; reads at most MAX_ENTRY_BYTES of any file, follows no link.
A module of nina (nina.host): standard library and nina.facts only.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

from nina import facts

PROG = "nina-vpn-verify"
METADATA_TYPE_USER = 0
METADATA_PREFIX = b"nina-fl "
MAX_METADATA_BYTES = 733  # OpenVPN's TLS_CRYPT_V2_MAX_METADATA_LEN less the type byte
MAX_ENTRY_BYTES = 4096
KEY_ID_HEX = 32
CERT_FIELD, KEY_FIELD = "cert-sha256", "tls-crypt-v2"
_SLUG_RE = re.compile(facts.SLUG_PATTERN)
_KEY_ID_RE = re.compile(rf"^[0-9a-f]{{{KEY_ID_HEX}}}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class Refused(Exception):
    pass


def metadata(slug: str, key_id: str) -> bytes:
    """A client key's metadata after its type byte: `nina-fl <slug> <key id>`."""
    if not _SLUG_RE.match(slug) or not _KEY_ID_RE.match(key_id):
        raise ValueError(f"tls-crypt-v2 metadata needs an organisation slug and a {KEY_ID_HEX}-digit key id, not {slug!r} {key_id!r}")
    return METADATA_PREFIX + f"{slug} {key_id}".encode("ascii")


def parse_metadata(data: bytes) -> tuple[str, str]:
    """(slug, key id) of nina's metadata; Refused if it is anything else."""
    if not data.startswith(METADATA_PREFIX) or len(data) > MAX_METADATA_BYTES:
        raise Refused("the tls-crypt-v2 key's metadata is not nina-fl's")
    try:
        slug, key_id = data[len(METADATA_PREFIX) :].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise Refused("the tls-crypt-v2 key's metadata is not `nina-fl <slug> <key id>`") from None
    if not _SLUG_RE.match(slug) or not _KEY_ID_RE.match(key_id):
        raise Refused("the tls-crypt-v2 key's metadata names no organisation slug and key id")
    return slug, key_id


def allow_entry(slug: str, cert_sha256: str, key_id: str) -> str:
    """The allow-directory file of organisation `slug` (its name is the slug)."""
    digest = cert_sha256.replace(":", "").lower()
    if not _SLUG_RE.match(slug) or not _SHA256_RE.match(digest) or not _KEY_ID_RE.match(key_id):
        raise ValueError(f"an allow entry needs a slug, a SHA-256 and a key id, not {slug!r} {cert_sha256!r} {key_id!r}")
    return (
        f"# nina-fl: organisation {slug} connects with this VPN certificate and tls-crypt-v2 key only\n"
        f"# (checked per connection by {facts.VPN_VERIFY_BIN}; rewritten by the VPN host's delivery).\n"
        f"{CERT_FIELD} {digest}\n{KEY_FIELD} {key_id}\n"
    )


def _read(path: str, dir_fd: int | None = None) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    with open(fd, "rb") as fh:
        data = fh.read(MAX_ENTRY_BYTES + 1)
    if len(data) > MAX_ENTRY_BYTES:
        raise Refused(f"{path} is larger than {MAX_ENTRY_BYTES} bytes")
    return data


def entry(allow_dir: str, slug: str) -> dict[str, str]:
    """The fields of `slug`'s allow file; Refused if there is none (not admitted) or it is malformed."""
    if not _SLUG_RE.match(slug):
        raise Refused(f"{slug!r} is not an organisation slug")
    try:
        dir_fd = os.open(allow_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise Refused(f"cannot open the allow directory {allow_dir}: {exc.strerror}") from None
    try:
        data = _read(slug, dir_fd)
    except FileNotFoundError:
        raise Refused(f"{slug} is not admitted (no {allow_dir}/{slug})") from None
    except OSError as exc:
        raise Refused(f"cannot read {allow_dir}/{slug}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    fields: dict[str, str] = {}
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise Refused(f"{allow_dir}/{slug} is not ASCII") from None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        words = line.split()
        if len(words) != 2 or words[0] not in (CERT_FIELD, KEY_FIELD) or words[0] in fields:
            raise Refused(f"{allow_dir}/{slug}: unexpected line {line[:80]!r}")
        fields[words[0]] = words[1]
    if set(fields) != {CERT_FIELD, KEY_FIELD}:
        raise Refused(f"{allow_dir}/{slug} must name both {CERT_FIELD} and {KEY_FIELD}")
    return fields


def check_tls_crypt_v2(allow_dir: str, env: Mapping[str, str]) -> str:
    """The slug whose current tls-crypt-v2 key the client holds; Refused otherwise."""
    if env.get("metadata_type") != str(METADATA_TYPE_USER):
        raise Refused(f"the tls-crypt-v2 key's metadata is of type {env.get('metadata_type')!r}, not nina-fl's ({METADATA_TYPE_USER})")
    path = env.get("metadata_file", "")
    if not path:
        raise Refused("OpenVPN gave no metadata_file")
    try:
        data = _read(path)
    except OSError as exc:
        raise Refused(f"cannot read the metadata file: {exc.strerror}") from None
    slug, key_id = parse_metadata(data)
    if entry(allow_dir, slug)[KEY_FIELD] != key_id:
        raise Refused(f"{slug}: tls-crypt-v2 key {key_id} is not its current key (a replaced kit?)")
    return slug


def check_tls_verify(allow_dir: str, depth: str, env: Mapping[str, str]) -> str:
    """The slug whose current certificate the client presented (depth 0); Refused otherwise."""
    if not depth.isdigit():
        raise Refused(f"certificate depth {depth!r} is not a number")
    if int(depth) > 0:
        return ""
    slug = env.get("X509_0_CN", "")
    digest = env.get("tls_digest_sha256_0", "").replace(":", "").lower()
    if not _SHA256_RE.match(digest):
        raise Refused("OpenVPN gave no tls_digest_sha256_0")
    if entry(allow_dir, slug)[CERT_FIELD] != digest:
        raise Refused(f"{slug}: certificate {digest[:16]}... is not its current certificate (a replaced kit?)")
    return slug


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    environ = os.environ if env is None else env
    try:
        if len(args) == 2 and args[0] == "tls-crypt-v2":
            slug = check_tls_crypt_v2(args[1], environ)
            print(f"{PROG}: {slug}: current tls-crypt-v2 key", file=sys.stderr)
            return 0
        if len(args) >= 4 and args[0] == "tls-verify":  # the subject may hold spaces
            slug = check_tls_verify(args[1], args[2], environ)
            if slug:
                print(f"{PROG}: {slug}: current certificate", file=sys.stderr)
            return 0
    except Refused as exc:
        print(f"{PROG}: refused: {exc}", file=sys.stderr)
        return 1
    print(f"usage: {PROG} tls-crypt-v2 <allow dir> | tls-verify <allow dir> <depth> <subject>", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
