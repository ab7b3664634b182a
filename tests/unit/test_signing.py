"""Ed25519 model signatures (issue 14, point 5): publishers hold the private key, workers
only public keys. A bundle signed by a key the workers do not list is refused
(``unknown_key``); nothing a worker holds can sign; a keyring rotation (old and new
listed, then the old removed); ``model keygen``'s files and modes."""

from __future__ import annotations

import base64
import hashlib
import logging
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from streamscore.cli import main
from streamscore.core.config import SigningSettings
from streamscore.core.errors import (
    ConfigError,
    SignatureMismatchError,
    UnknownSigningKeyError,
)
from streamscore.core.records import Role
from streamscore.metrics.series import Metrics
from streamscore.models import envelope
from streamscore.models.container import Bundle, sign_bundle, verify_signature
from streamscore.models.envelope import ModelEnvelope
from streamscore.models.runtime import verify_and_load
from streamscore.models.signing import (
    Ed25519Signer,
    Ed25519Verifier,
    HmacSigner,
    Signer,
    Verifier,
    keygen,
    read_keyring,
    signer_from,
    verifier_from,
    worker_verifier,
)
from streamscore.models.store import ModelStore
from streamscore.models.updates import ModelUpdater

READER = {"f0": "double", "f1": "double", "f2": "double?", "event_id": "string"}


def published(b: Bundle, signer: Signer) -> ModelEnvelope:
    """A model-topic record as a publisher makes it: artifact and envelope signed."""
    art = sign_bundle(b.to_bytes(), signer)
    return envelope.make(
        model_name=b.meta.name,
        role=Role.PRIMARY,
        version=b.meta.version,
        artifact=art.payload,
        signature=art.signature,
        key_id=art.key_id,
        created_at_ms=1,
        published_at_ms=1_700_000_000_000,
        publisher="t",
        signer=signer,
    )


def worker(verifier: Verifier) -> tuple[ModelUpdater, ModelStore, CollectorRegistry]:
    reg, store = CollectorRegistry(), ModelStore()
    up = ModelUpdater(store, keyring=verifier, reader_fields=READER, metrics=Metrics(reg))
    return up, store, reg


def rejected(reg: CollectorRegistry, reason: str) -> float:
    v = reg.get_sample_value("streamscore_model_updates_rejected_total", {"reason": reason})
    return v or 0.0


def test_round_trip_bundle_and_envelope(
    make_regressor_bundle: Callable[..., Bundle],
    signers: Mapping[str, Ed25519Signer],
    verifier: Ed25519Verifier,
) -> None:
    b = make_regressor_bundle(1)
    e = published(b, signers["k1"])
    assert len(e.signature or b"") == 64 and e.key_id == "k1"
    envelope.verify(e, verifier)
    model = verify_and_load(e.artifact, e.signature, e.key_id, verifier)
    assert model.meta.version == 1
    up, store, _reg = worker(verifier)
    assert up.apply(e) and store.snapshot().versions() == {"primary": 1}
    # one flipped bit of the artifact or of the signature: refused
    with pytest.raises(SignatureMismatchError) as info:
        verify_signature(e.artifact[:-1] + bytes([e.artifact[-1] ^ 1]), e.signature, "k1", verifier)
    assert info.value.reason == "bad_signature"
    sig = bytearray(e.signature or b"")
    sig[0] ^= 1
    with pytest.raises(SignatureMismatchError):
        verify_signature(e.artifact, bytes(sig), "k1", verifier)
    for short in (b"x", bytes(63), bytes(65)):  # malformed signatures: refused, no crash
        with pytest.raises(SignatureMismatchError):
            verify_signature(e.artifact, short, "k1", verifier)


def test_a_key_the_workers_do_not_list_is_refused_as_unknown_key(
    make_regressor_bundle: Callable[..., Bundle], verifier: Ed25519Verifier
) -> None:
    stranger = Ed25519Signer(Ed25519PrivateKey.generate(), "stranger")
    e = published(make_regressor_bundle(1), stranger)
    with pytest.raises(UnknownSigningKeyError) as info:
        verify_signature(e.artifact, e.signature, e.key_id, verifier)
    assert info.value.reason == "unknown_key" and "'stranger'" in str(info.value)
    up, store, reg = worker(verifier)
    assert not up.apply(e)
    assert rejected(reg, "unknown_key") == 1 and not store.has_primary
    # another key claiming a listed id: it does not verify under that id's public key
    impostor = Ed25519Signer(Ed25519PrivateKey.generate(), "k1")
    assert not up.apply(published(make_regressor_bundle(2), impostor))
    assert rejected(reg, "bad_signature") == 1 and not store.has_primary


def test_a_worker_holds_nothing_that_can_sign(tmp_path: Path) -> None:
    pair = keygen(tmp_path / "keys", "pub1")
    workers = SigningSettings(keyring_files=(pair.public_file,))
    v = worker_verifier(workers)
    assert v.key_ids() == ["pub1"]
    assert not isinstance(v, Signer) and not hasattr(v, "sign")
    # no private key configured: no signer
    with pytest.raises(ConfigError, match="STREAMSCORE_SIGNING_KEY_FILE"):
        signer_from(workers)
    # the worker's own material, given as if it were a private key: refused
    with pytest.raises(ConfigError, match="cannot sign"):
        signer_from(SigningSettings(key_file=pair.public_file))
    with pytest.raises(ConfigError, match="cannot sign"):
        Ed25519Signer.from_file(pair.public_file)
    with pytest.raises(ConfigError):
        Ed25519Verifier({"k": bytes(31)})


def test_a_worker_given_a_private_key_file_does_not_read_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pair = keygen(tmp_path, "p")
    settings = SigningSettings(key_file=tmp_path / "absent.key", keyring_files=(pair.public_file,))
    with caplog.at_level(logging.WARNING):
        v = worker_verifier(settings)  # the private key file does not even exist: not read
    assert v.key_ids() == ["p"] and "remove the private key from workers" in caplog.text


def test_keyring_rotation(tmp_path: Path, make_regressor_bundle: Callable[..., Bundle]) -> None:
    old, new = keygen(tmp_path, "old"), keygen(tmp_path, "new")
    keyring = tmp_path / "keyring"
    keyring.write_text(
        "# publishers' public keys\n" + old.public_file.read_text() + new.public_file.read_text()
    )
    by_old = published(make_regressor_bundle(1), Ed25519Signer.from_file(old.private_file))
    by_new = published(make_regressor_bundle(2), Ed25519Signer.from_file(new.private_file))
    both = verifier_from(SigningSettings(keyring_files=(keyring,)))
    assert both.key_ids() == ["new", "old"]
    for e in (by_old, by_new):
        envelope.verify(e, both)
        verify_signature(e.artifact, e.signature, e.key_id, both)
    # the old key removed from the keyring: what it signed is refused, the new still serves
    keyring.write_text(new.public_file.read_text())
    only_new = verifier_from(SigningSettings(keyring_files=(keyring,)))
    with pytest.raises(UnknownSigningKeyError):
        envelope.verify(by_old, only_new)
    up, store, reg = worker(only_new)
    assert not up.apply(by_old) and rejected(reg, "unknown_key") == 1
    assert up.apply(by_new) and store.snapshot().versions() == {"primary": 2}


def test_keygen_modes_key_id_and_refusal_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "new-dir"
    pair = keygen(out)
    assert pair.key_id.startswith("ed25519-") and len(pair.key_id) == len("ed25519-") + 12
    assert stat.S_IMODE(pair.private_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.public_file.stat().st_mode) == 0o644
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    signer = Ed25519Signer.from_file(pair.private_file)
    assert signer.key_id == pair.key_id
    assert read_keyring(pair.public_file) == {pair.key_id: signer.public_key()}
    before = pair.private_file.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        keygen(out, pair.key_id)
    assert pair.private_file.read_bytes() == before
    # the public half alone in the way: refused too, and nothing written
    lone = keygen(tmp_path / "other", "lone")
    lone.private_file.unlink()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        keygen(tmp_path / "other", "lone")
    assert not lone.private_file.exists()
    with pytest.raises(ConfigError, match="key id"):
        keygen(tmp_path, "../escape")
    # the file's key id wins; a setting that contradicts it is refused
    with pytest.raises(ConfigError, match="STREAMSCORE_SIGNING_KEY_ID"):
        Ed25519Signer.from_file(pair.private_file, "other-id")


def test_keygen_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys"
    assert main(["model", "keygen", "--out", str(out), "--key-id", "prod-1"]) == 0
    text = capsys.readouterr().out
    assert "STREAMSCORE_SIGNING_KEY_FILE=" in text and "prod-1.pub" in text
    pem = (out / "prod-1.key").read_text()
    assert pem.split("-----BEGIN PRIVATE KEY-----")[1][:40] not in text  # never printed
    assert stat.S_IMODE((out / "prod-1.key").stat().st_mode) == 0o600
    assert main(["model", "keygen", "--out", str(out), "--key-id", "prod-1"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_keyring_file_errors_name_the_line_never_the_key(tmp_path: Path) -> None:
    pair = keygen(tmp_path, "a")
    good = pair.public_file.read_text().strip()
    private_b64 = base64.b64encode(bytes(range(64))).decode()
    cases = {
        "not base64": "b=not*base64*at-all",
        "is 64 bytes": f"b={private_b64}",
        "listed twice": f"{good}\n{good}",
        "expected key_id=<key>": "just-a-line",
        "key id": f"bad id={good.split('=', 1)[1]}",
    }
    for expect, text in cases.items():
        f = tmp_path / "ring"
        f.write_text(text + "\n")
        with pytest.raises(ConfigError, match=expect) as info:
            read_keyring(f)
        assert private_b64 not in str(info.value) and "not*base64" not in str(info.value)
    with pytest.raises(ConfigError, match="no PEM private key"):
        Ed25519Signer.from_file(pair.public_file)


def test_reprs_show_key_ids_only(
    signers: Mapping[str, Ed25519Signer], verifier: Ed25519Verifier
) -> None:
    s = signers["k1"]
    raw = base64.b64encode(s.public_key()).decode()
    assert repr(s) == "Ed25519Signer(key_id='k1')"
    assert repr(verifier) == "Ed25519Verifier(key_ids=['k1', 'k2'])" and raw not in repr(verifier)


def test_a_bundle_signed_with_anything_derived_from_a_workers_material_is_refused(
    tmp_path: Path, make_regressor_bundle: Callable[..., Bundle]
) -> None:
    """Everything a worker holds is its keyring file (public keys): whatever an attacker
    on a worker makes of it (the public key as an Ed25519 seed, as an HMAC secret, the
    whole keyring file as a seed's source), a bundle so signed under a listed key id is
    refused, and the worker keeps what it serves."""
    pair = keygen(tmp_path / "keys", "pub1")
    keyring_file = pair.public_file
    workers = SigningSettings(keyring_files=(keyring_file,))
    v = worker_verifier(workers)
    # the worker's material: public keys only (32 raw bytes each, loadable as public keys)
    material = read_keyring(keyring_file)
    assert list(material) == ["pub1"] and all(len(k) == 32 for k in material.values())
    assert "PRIVATE" not in keyring_file.read_text()

    public = material["pub1"]
    derived: list[Signer] = [
        Ed25519Signer(Ed25519PrivateKey.from_private_bytes(public), "pub1"),
        Ed25519Signer(
            Ed25519PrivateKey.from_private_bytes(
                hashlib.sha256(keyring_file.read_bytes()).digest()
            ),
            "pub1",
        ),
        Ed25519Signer(
            Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"pub1").digest()), "pub1"
        ),
        HmacSigner(public, "pub1"),
        HmacSigner(keyring_file.read_bytes(), "pub1"),
    ]
    up, store, reg = worker(v)
    legit = published(make_regressor_bundle(1), Ed25519Signer.from_file(pair.private_file))
    assert up.apply(legit) and store.snapshot().versions() == {"primary": 1}
    for n, forger in enumerate(derived, 2):
        forged = published(make_regressor_bundle(n), forger)
        with pytest.raises(SignatureMismatchError):
            verify_signature(forged.artifact, forged.signature, forged.key_id, v)
        assert not up.apply(forged)
    assert rejected(reg, "bad_signature") == len(derived)
    assert store.snapshot().versions() == {"primary": 1}
