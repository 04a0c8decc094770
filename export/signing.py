"""Ed25519 signatures over a bundle's manifest: ``tailor keygen``, ``tailor sign``.

``manifest.json`` holds the sha256 of every other file, so one signature of its bytes covers the whole
bundle. The signature is detached (``manifest.sig``, base64): signing changes no file that was hashed,
and the edge runtime and ``tailor verify --public-key`` check it (``runtime.check_signature``) with
nothing but the public key. The private key stays with whoever releases bundles; a device holds only
the public one. What this protects, and what it does not: docs/security.md.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_tailor.errors import ArtifactError, InputError
from edge_tailor.rundir import write_text_atomic

from . import runtime


def public_key_fingerprint(public_pem: bytes) -> str:
    """sha256 of the public key's PEM, shortened: to tell keys apart in messages."""
    return hashlib.sha256(public_pem).hexdigest()[:16]


def generate_keypair(private_path: str | Path) -> tuple[Path, Path]:
    """Write a new private key (PEM, PKCS8, readable by its owner only) and ``<private>.pub`` beside it.

    Refuses to overwrite either file: a lost private key cannot be recreated, and bundles signed with it
    would then verify against nothing."""
    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise InputError(path, None, "exists: refusing to overwrite a key (choose another path)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_pem)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    write_text_atomic(public_path, public_pem.decode("ascii"))
    return private_path, public_path


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise InputError(path, None, f"cannot read the private key: {e.strerror}") from None
    except (ValueError, TypeError) as e:  # not PEM, or encrypted
        raise InputError(path, None, f"not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(path, None, f"not an Ed25519 private key ({type(key).__name__})")
    return key


def sign_bundle(bundle: str | Path, private_key: str | Path) -> dict:
    """Check the bundle's files (a changed bundle is never signed), then write ``manifest.sig``."""
    bundle, private_key = Path(bundle), Path(private_key)
    key = _load_private_key(private_key)
    try:
        manifest_sha, _ = runtime.verify_files(bundle)
    except runtime.BundleError as e:
        raise ArtifactError(e.path, e.where, e.problem) from None
    manifest = (bundle / runtime.MANIFEST).read_bytes()
    if hashlib.sha256(manifest).hexdigest() != manifest_sha:
        raise ArtifactError(bundle / runtime.MANIFEST, None, "changed while it was being signed")
    signature = base64.b64encode(key.sign(manifest)).decode("ascii")
    write_text_atomic(bundle / runtime.MANIFEST_SIG, signature + "\n")
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"signature": str(bundle / runtime.MANIFEST_SIG), "manifest_sha256": manifest_sha,
            "key": public_key_fingerprint(public_pem)}
