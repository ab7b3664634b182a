"""Model signatures a worker cannot forge (issue 14, point 5), on the real cluster: a
score worker given only the publishers' public key serves what the private key signed,
refuses (and counts, as ``unknown_key``) a bundle signed by a key it does not list, and
the same worker environment cannot publish at all."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from streamscore.core.records import Role
from streamscore.dev.synthetic import demo_bundle
from streamscore.models.signing import Ed25519Signer

from .stack import Stack, WorkerProcess


def _model_cli(stack: Stack, *args: str, publisher: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamscore.cli", "model", *args],
        env=stack.env(publisher=publisher),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_public_keys_only_worker_serves_signed_models_and_refuses_an_unlisted_key(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    worker_env = stack.env()
    assert "STREAMSCORE_SIGNING_KEY_FILE" not in worker_env
    assert "STREAMSCORE_PUBLIC_KEY_FILE" in worker_env
    v1 = stack.tmp / "v1.bundle"
    v1.write_bytes(demo_bundle("ab", version=1).to_bytes())
    # the workers' environment cannot sign: `model publish` there fails, naming the setting
    pub = ("publish", "--name", "demo", "--bundle", str(v1))
    denied = _model_cli(stack, *pub, publisher=False)
    assert denied.returncode == 1, denied.stdout + denied.stderr
    assert "STREAMSCORE_SIGNING_KEY_FILE" in denied.stderr
    assert "Traceback" not in denied.stderr
    # a publisher (the private key) publishes v1 through the CLI
    ok = _model_cli(stack, *pub, publisher=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "published demo/primary v1" in ok.stdout

    w = make_worker("pubkeys")
    w.wait_until(
        lambda: w.sample("streamscore_model_info", {"model_version": "1", "role": "primary"}) == 1,
        "v1 (signed by the publishers' key) serving",
    )
    # a key the workers do not list signs v2 and writes it to the model topic
    stranger = Ed25519Signer(Ed25519PrivateKey.generate(), "stranger")
    stack.model_topic().publish(
        demo_bundle("ab", version=2, seed=2).to_bytes(),
        Role.PRIMARY,
        key=stranger,
        publisher="attacker",
    )

    def unknown_key() -> float:
        return w.sample("streamscore_model_updates_rejected_total", {"reason": "unknown_key"})

    w.wait_until(lambda: unknown_key() >= 1, "the stranger's v2 rejected as unknown_key")
    assert unknown_key() == 1
    assert w.sample("streamscore_model_info", {"model_version": "1", "role": "primary"}) == 1
    ids = stack.produce_events(300, seed=5)
    msgs = stack.read(stack.topics.predictions, until=lambda got: len(got) >= len(ids))
    dec = stack.decoder("prediction")
    preds = [dec(m.value()) for m in msgs]
    assert {p["event_id"] for p in preds} == set(ids)
    assert {p["model_version"] for p in preds} == {1}
    assert "Traceback" not in w.log()
    assert w.terminate() == 0


def test_keyring_rotation_old_and_new_then_the_old_removed(
    stack: Stack, make_worker: Callable[..., WorkerProcess]
) -> None:
    """Rotation on running workers: with both public keys listed, what either private key
    signed serves; restarted with the old key removed, a bundle the old key signs is
    refused (``unknown_key``) and the new key's model keeps serving."""
    from streamscore.models.signing import keygen

    old, new = keygen(stack.tmp / "old", "old"), keygen(stack.tmp / "new", "new")
    keyring = stack.tmp / "keyring"
    keyring.write_text(old.public_file.read_text() + new.public_file.read_text())
    topic = stack.model_topic()

    def publish(version: int, signer_file: Path) -> None:
        topic.publish(
            demo_bundle("ab", version=version, seed=version).to_bytes(),
            Role.PRIMARY,
            key=Ed25519Signer.from_file(signer_file),
            publisher="rotation",
        )

    def serving(w: WorkerProcess, version: int) -> Callable[[], bool]:
        labels = {"model_version": str(version), "role": "primary"}
        return lambda: w.sample("streamscore_model_info", labels) == 1

    publish(1, old.private_file)
    w1 = make_worker("rot1", env={"STREAMSCORE_KEYRING_FILE": str(keyring)})
    w1.wait_until(serving(w1, 1), "v1 (old key) serving with both keys listed")
    publish(2, new.private_file)
    w1.wait_until(serving(w1, 2), "v2 (new key) serving with both keys listed")
    assert w1.terminate() == 0

    keyring.write_text(new.public_file.read_text())  # the old key retired
    publish(3, old.private_file)
    w2 = make_worker("rot2", env={"STREAMSCORE_KEYRING_FILE": str(keyring)})

    def unknown_key() -> float:
        return w2.sample("streamscore_model_updates_rejected_total", {"reason": "unknown_key"})

    w2.wait_until(lambda: unknown_key() >= 2, "v1 and v3 (old key) refused as unknown_key")
    w2.wait_until(serving(w2, 2), "v2 (new key) still serving")
    assert w2.sample("streamscore_model_info", {"model_version": "3", "role": "primary"}) != 1
    ids = stack.produce_events(200, seed=9)
    msgs = stack.read(stack.topics.predictions, until=lambda got: len(got) >= len(ids))
    dec = stack.decoder("prediction")
    assert {dec(m.value())["model_version"] for m in msgs} == {2}
    assert w2.terminate() == 0
