"""CURVE key files for the carrier feed (SPEC §4 Security, §9 `geofence keys generate DIR`).

Files are ZeroMQ certificates (ZPL text, as `zmq.auth.create_certificates` writes them and
`zmq.auth.load_certificate` reads them), two per name::

    NAME.key          public certificate: public key only; safe to hand out
    NAME.key_secret   secret certificate: public and secret key; mode 0600

`generate(DIR, carriers)` writes the engine's pair (`server.*`) and one pair per carrier.
The operator then

- points `[ingest] curve_keys` at DIR (the engine reads `server.key_secret`),
- gives each carrier its `<carrier>.key_secret` and `server.key` (over a secure channel),
- copies each carrier's public `<carrier>.key` into the directory `[ingest] curve_carriers`
  names: the allowed carriers. Removing a file there and reloading revokes the carrier.

A carrier's name is the file stem of its public certificate: `cmcc-sd.key` admits the
key inside as carrier `cmcc-sd`. (pyzmq writes certificate metadata only into the secret
file, so the public file cannot carry the name; the stem is also what an operator sees.)
Names follow the wire format's `carrier` field, `[A-Za-z0-9_.-]{1,64}`; `server` is
reserved for the engine's own pair.
"""

import logging
import os
import re
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from geofence.errors import GeofenceError
from ingest.protocol import CARRIER_PATTERN

log = logging.getLogger(__name__)

SERVER = "server"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700
Z85_KEY_CHARS = 40
_CARRIER_NAME = re.compile(CARRIER_PATTERN)


class KeyFileError(GeofenceError, ValueError):
    """A key file or directory is missing, unreadable, malformed or duplicated; the message
    names every file at fault. Fix or regenerate those files."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class KeysExistError(GeofenceError, FileExistsError):
    """Key files already exist; pass force=True (`--force`) to replace them, then give every
    holder of a replaced key its new file."""


class CarrierNameError(GeofenceError, ValueError):
    """A carrier name does not match [A-Za-z0-9_.-]{1,64} or is the reserved `server`."""


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair as z85 bytes (40 characters each), as pyzmq's socket options take
    them. The secret is left out of repr() so a logged KeyPair never leaks it."""

    public: bytes
    secret: bytes = field(repr=False)


def check_carrier_name(name: str) -> str:
    """Return `name` if it is a valid carrier name, else raise CarrierNameError."""
    if not isinstance(name, str) or not _CARRIER_NAME.fullmatch(name):
        raise CarrierNameError(f"carrier name {name!r} must match {CARRIER_PATTERN}")
    if name == SERVER:
        raise CarrierNameError(f"carrier name {SERVER!r} is reserved for the engine's key pair")
    return name


def generate(directory: str | os.PathLike, carriers: list[str], *,
             force: bool = False) -> list[Path]:
    """Write the server's key pair and one per carrier into `directory`; return the new files.

    The server pair is created if absent and kept if present, so carriers can be added to
    an existing directory; `force=True` replaces it and every named carrier's pair. Without
    `force`, an existing carrier pair is an error and nothing is written. Secret files are
    mode 0600 from the moment they appear (they are written in a private temporary
    directory and moved in); a new directory is mode 0700.
    """
    names = [check_carrier_name(n) for n in carriers]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise CarrierNameError(f"carrier names given twice: {', '.join(duplicated)}")
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise KeyFileError(f"{out}: not a directory")

    server_files = [_public_path(out, SERVER), _secret_path(out, SERVER)]
    server_present = [p.exists() for p in server_files]
    if any(server_present) and not all(server_present) and not force:
        missing = server_files[server_present.index(False)]
        raise KeyFileError(f"{missing} is missing but its partner exists; "
                           "restore it, or pass force=True to replace the server key pair")
    if force or not any(server_present):
        names.insert(0, SERVER)
    if not force:
        existing = [str(p) for n in names for p in (_public_path(out, n), _secret_path(out, n))
                    if p.exists()]
        if existing:
            raise KeysExistError("refusing to overwrite existing keys (pass force=True to "
                                 "replace them): " + ", ".join(existing))

    out.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    created: list[Path] = []
    staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=out))  # mode 0700: private
    try:
        for name in names:
            public, secret = (Path(p) for p in zmq.auth.create_certificates(staging, name))
            os.chmod(secret, SECRET_MODE)
            os.chmod(public, PUBLIC_MODE)
            for made, target in ((secret, _secret_path(out, name)),
                                 (public, _public_path(out, name))):
                _move(made, target, force)
                created.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return created


def load_keypair(path: str | os.PathLike) -> KeyPair:
    """Read a secret certificate (`NAME.key_secret`): the pair a socket needs to connect."""
    public, secret = _read_certificate(Path(path))
    if secret is None:
        raise KeyFileError(f"{path}: no secret key (a public certificate; the secret one "
                           f"ends in {SECRET_SUFFIX})")
    if zmq.curve_public(secret) != public:
        raise KeyFileError(f"{path}: the public key does not belong to the secret key")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        log.warning("secret key file %s is readable by others (mode %o); chmod 600 it", path,
                    mode)
    return KeyPair(public, secret)


def load_server_keys(directory: str | os.PathLike) -> KeyPair:
    """The engine's key pair from `directory/server.key_secret` (`[ingest] curve_keys`)."""
    return load_keypair(_secret_path(Path(directory), SERVER))


def load_public_key(path: str | os.PathLike) -> bytes:
    """The z85 public key in a certificate, e.g. `server.key` for a carrier's socket."""
    return _read_certificate(Path(path))[0]


def load_allowed_carriers(directory: str | os.PathLike) -> dict[bytes, str]:
    """Map each allowed public key (z85 bytes) to its carrier name, from the `*.key` files
    in `directory` (`[ingest] curve_carriers`); other files are ignored.

    Every problem is reported together, naming the files, and nothing is returned then: a
    malformed file, a file name that is not a carrier name, one key under two names, or a
    secret certificate in the directory (it must hold only public keys; point it elsewhere
    than the directory `generate` wrote). An empty directory admits no one (logged).
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise KeyFileError(f"{folder}: allowed-carriers directory does not exist")
    problems: list[str] = []
    secrets = sorted(p.name for p in folder.glob("*" + SECRET_SUFFIX))
    if secrets:
        problems.append(f"{folder} holds secret keys ({', '.join(secrets)}); the allowed-"
                        "carriers directory must hold only carriers' public .key files")
    allowed: dict[bytes, str] = {}
    where: dict[bytes, Path] = {}
    for path in sorted(folder.glob("*" + PUBLIC_SUFFIX)):
        name = path.name[:-len(PUBLIC_SUFFIX)]
        try:
            check_carrier_name(name)
            public, secret = _read_certificate(path)
        except (CarrierNameError, KeyFileError) as e:
            problems.append(f"{path}: {e}" if isinstance(e, CarrierNameError) else str(e))
            continue
        if secret is not None:
            problems.append(f"{path}: holds a secret key; copy only the public certificate")
        elif public in allowed:
            problems.append(f"{path}: same key as {where[public]}; one key, one carrier")
        else:
            allowed[public] = name
            where[public] = path
    if problems:
        raise KeyFileError(problems)
    if not allowed:
        log.warning("no carrier public keys (*%s) in %s: every carrier will be refused",
                    PUBLIC_SUFFIX, folder)
    return allowed


def _read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a certificate, both checked to be z85 CURVE keys."""
    if not path.is_file():
        raise KeyFileError(f"{path}: no such certificate file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as e:
        raise KeyFileError(f"{path}: unreadable certificate ({e.strerror or e})") from e
    except ValueError as e:
        raise KeyFileError(f"{path}: not a certificate (no public key in it)") from e
    for label, key in (("public", public), ("secret", secret)):
        if key is not None and not _is_z85_key(key):
            raise KeyFileError(f"{path}: the {label} key is not a 40-character z85 CURVE key")
    return public, secret


def _is_z85_key(key: bytes) -> bool:
    if len(key) != Z85_KEY_CHARS:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, struct.error):  # bad length, bad character, overflow
        return False


def _move(source: Path, target: Path, force: bool) -> None:
    """Put `source` at `target` atomically; without `force`, never over an existing file
    (os.link fails if `target` appeared since we checked)."""
    if force:
        os.replace(source, target)
        return
    try:
        os.link(source, target)
    except FileExistsError as e:
        raise KeysExistError(f"refusing to overwrite {target}, which appeared meanwhile") from e
    source.unlink()


def _public_path(directory: Path, name: str) -> Path:
    return directory / (name + PUBLIC_SUFFIX)


def _secret_path(directory: Path, name: str) -> Path:
    return directory / (name + SECRET_SUFFIX)
