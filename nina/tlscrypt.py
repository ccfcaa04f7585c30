"""OpenVPN tls-crypt-v2 keys (OpenVPN 2.5+; Ubuntu 24.04 ships 2.6) from random bytes, in pure Python.

Each on-premise organisation gets its own control-channel key: a leaked kit exposes only that
site's key, and the key goes with the site (nina-vpn-verify refuses any key whose id is not the
organisation's current one). This replaces the tenancy-wide tls-auth key every kit used to share.

The formats are OpenVPN's own (src/openvpn/tls_crypt.c, doc/tls-crypt-v2.txt):

- server key: PEM "OpenVPN tls-crypt-v2 server key" of 128 bytes, Ke (64, of which AES-256-CTR
  uses the first 32) then Ka (64, of which HMAC-SHA256 uses the first 32);
- client key: PEM "OpenVPN tls-crypt-v2 client key" of Kc || WKc, where Kc is 256 random bytes
  (the client's two tls-crypt keys) and WKc = T || AES-256-CTR(Ke, IV = T[:16], Kc || metadata)
  || len, with len the big-endian 16-bit length of WKc and T = HMAC-SHA256(Ka, len || Kc ||
  metadata).

The wrapping is deterministic (a synthetic IV), so the same random bytes always give the same
key file: no spurious diff. The metadata is of the "user" type (0x00) and reads
`nina-fl <slug> <key id>` (nina.host.vpn_verify.metadata); the key id (`key_id`) is a hash of
Kc, which the VPN server's allow-list names per organisation. The server authenticates the metadata with Ka, so a client
cannot forge it. Never imports pulumi; `cryptography` only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
import textwrap

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from nina.host import vpn_verify

SERVER_PEM_NAME = "OpenVPN tls-crypt-v2 server key"
CLIENT_PEM_NAME = "OpenVPN tls-crypt-v2 client key"
SERVER_KEY_BYTES = 128  # Ke (64) || Ka (64)
CLIENT_KEY_BYTES = 256  # Kc: struct key2, two struct key of 64 cipher + 64 HMAC bytes
TAG_BYTES = 32
KEY_ID_HEX = vpn_verify.KEY_ID_HEX  # 128 bits of SHA-256(Kc)
_HEX_RE = re.compile(r"^[0-9a-fA-F]*$")


def _raw(value: bytes | str, size: int, what: str) -> bytes:
    """`size` random bytes, given as bytes or as their hex digits (pulumi-random's RandomBytes.hex)."""
    if isinstance(value, str):
        digits = value.strip()
        if len(digits) != 2 * size or not _HEX_RE.match(digits):
            raise ValueError(f"{what} must be {2 * size} hex digits ({size} random bytes), got {len(digits)} characters")
        value = bytes.fromhex(digits)
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{what} must be {size} random bytes")
    if len(set(value)) < 8:
        raise ValueError(f"{what} is not random bytes (fewer than 8 distinct byte values)")
    return value


def _pem(name: str, data: bytes) -> str:
    body = textwrap.wrap(base64.b64encode(data).decode("ascii"), 64)
    return "\n".join([f"-----BEGIN {name}-----", *body, f"-----END {name}-----"]) + "\n"


def _unpem(name: str, text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be text")
    begin, end = f"-----BEGIN {name}-----", f"-----END {name}-----"
    lines = [line.strip() for line in text.replace("\r\n", "\n").strip().split("\n")]
    if len(lines) < 3 or lines[0] != begin or lines[-1] != end:
        raise ValueError(f"{what} is not one {name!r} block (exactly one BEGIN and END line, nothing around them)")
    try:
        return base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} does not hold base64 between its BEGIN and END lines") from None


def server_key(raw: bytes | str) -> str:
    """The server key file (as `openvpn --genkey tls-crypt-v2-server` writes it) from 128 random bytes."""
    return _pem(SERVER_PEM_NAME, _raw(raw, SERVER_KEY_BYTES, "tls-crypt-v2 server key"))


def _server_parts(server_pem: str) -> tuple[bytes, bytes]:
    data = _unpem(SERVER_PEM_NAME, server_pem, "tls-crypt-v2 server key")
    if len(data) != SERVER_KEY_BYTES:
        raise ValueError(f"tls-crypt-v2 server key must hold {SERVER_KEY_BYTES} bytes, holds {len(data)}")
    return data[:32], data[64:96]  # AES-256 key, HMAC-SHA256 key


def server_key_file(text: str) -> str:
    """A server key file checked (one block of 128 bytes) and written back canonically."""
    data = _unpem(SERVER_PEM_NAME, text, "tls-crypt-v2 server key")
    if len(data) != SERVER_KEY_BYTES:
        raise ValueError(f"tls-crypt-v2 server key must hold {SERVER_KEY_BYTES} bytes, holds {len(data)}")
    return _pem(SERVER_PEM_NAME, data)


def _client_parts(text: str) -> tuple[bytes, bytes]:
    """(Kc, WKc) of one client key block: a wrapped key whose length field matches, within
    OpenVPN's metadata bound; ValueError otherwise."""
    data = _unpem(CLIENT_PEM_NAME, text, "tls-crypt-v2 client key")
    kc, wkc = data[:CLIENT_KEY_BYTES], data[CLIENT_KEY_BYTES:]
    if len(data) < CLIENT_KEY_BYTES + TAG_BYTES + 2 + 1 or struct.unpack(">H", wkc[-2:])[0] != len(wkc):
        raise ValueError("tls-crypt-v2 client key is not a key and a wrapped key (the length field does not match)")
    if len(wkc) > TAG_BYTES + CLIENT_KEY_BYTES + 1 + vpn_verify.MAX_METADATA_BYTES + 2:
        raise ValueError("tls-crypt-v2 client key carries more metadata than OpenVPN accepts")
    return kc, wkc


def client_key_file(text: str) -> str:
    """A client key file checked (`_client_parts`) and written back canonically. Without the
    server key the wrapping itself cannot be checked: `unwrap` does that."""
    return _pem(CLIENT_PEM_NAME, b"".join(_client_parts(text)))


def key_id(client_raw: bytes | str) -> str:
    """The id the VPN server's allow-list holds for a client key: 128 bits of SHA-256(Kc), hex."""
    return hashlib.sha256(_raw(client_raw, CLIENT_KEY_BYTES, "tls-crypt-v2 client key")).hexdigest()[:KEY_ID_HEX]


def client_key(server_pem: str, client_raw: bytes | str, slug: str) -> str:
    """The client key file of organisation `slug` (as `openvpn --tls-crypt-v2 <server key>
    --genkey tls-crypt-v2-client` writes it, with nina's metadata), from 256 random bytes."""
    ke, ka = _server_parts(server_pem)
    kc = _raw(client_raw, CLIENT_KEY_BYTES, "tls-crypt-v2 client key")
    meta = bytes([vpn_verify.METADATA_TYPE_USER]) + vpn_verify.metadata(slug, key_id(kc))
    net_len = struct.pack(">H", TAG_BYTES + len(kc) + len(meta) + 2)
    tag = hmac.new(ka, net_len + kc + meta, hashlib.sha256).digest()
    encryptor = Cipher(algorithms.AES(ke), modes.CTR(tag[:16])).encryptor()
    wkc = tag + encryptor.update(kc + meta) + encryptor.finalize() + net_len
    return _pem(CLIENT_PEM_NAME, kc + wkc)


def unwrap(server_pem: str, client_pem: str) -> tuple[bytes, bytes]:
    """(Kc, metadata with its type byte) of a client key, checked with the server key as OpenVPN
    checks it; ValueError if the key was not made with this server key or is malformed."""
    ke, ka = _server_parts(server_pem)
    kc, wkc = _client_parts(client_pem)
    tag, body = wkc[:TAG_BYTES], wkc[TAG_BYTES:-2]
    decryptor = Cipher(algorithms.AES(ke), modes.CTR(tag[:16])).decryptor()
    plain = decryptor.update(body) + decryptor.finalize()
    if not hmac.compare_digest(tag, hmac.new(ka, wkc[-2:] + plain, hashlib.sha256).digest()):
        raise ValueError("tls-crypt-v2 client key was not made with this server key (authentication failed)")
    if plain[:CLIENT_KEY_BYTES] != kc:
        raise ValueError("tls-crypt-v2 client key: the wrapped key differs from the key in front of it")
    return kc, plain[CLIENT_KEY_BYTES:]


def client_key_id(client_pem: str) -> str:
    """The key id (`key_id`) of a client key file, from its Kc (no server key needed)."""
    return key_id(_client_parts(client_pem)[0])
