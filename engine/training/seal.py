"""Which checkpoints this machine wrote: a seal over DeepSpeed's own files, keyed by a secret only it holds.

DeepSpeed saves its module and ZeRO optimizer states with pickle and loads them with
`torch.load(weights_only=False)` (its checkpoint engine), so loading them runs whatever code the files
name; they are not plain data (the optimizer state holds DeepSpeed's LossScaler object). The engine hands
DeepSpeed only files it can show this machine wrote: when a checkpoint is saved, rank 0 writes `ds.seal`
with the sha256 of every file under `ds/` and an HMAC-SHA256 of that list under this machine's key;
resume recomputes both and refuses any difference (no seal, a seal made with another key, a file added,
removed or changed). A checkpoint copied from elsewhere is therefore refused on resume; its weights stay
usable through `python -m engine.export`, which reads them without pickle.

The key is $VJEPA_CHECKPOINT_KEY (a path) or $XDG_CONFIG_HOME/vjepa-engine/checkpoint.key
(~/.config/...): 32 random bytes in hex, created with mode 0600 on the first save. The nodes of a
multi-node run need the same key (a shared home, or the variable naming one shared file).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

SEAL = "ds.seal"
SEAL_FORMAT = 1
KEY_ENV = "VJEPA_CHECKPOINT_KEY"


class CheckpointRefused(Exception):
    """A checkpoint file the engine will not load: one line naming the file and the fix."""


def key_path() -> Path:
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "vjepa-engine" / "checkpoint.key"


def machine_key(create: bool) -> bytes | None:
    """This machine's key; None when there is none and `create` is False."""
    path = key_path()
    if not path.is_file():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secrets.token_hex(32) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)  # the first writer wins; a concurrent one reads the winner's key
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (ValueError, UnicodeDecodeError):
        key = b""
    if len(key) < 16:
        raise CheckpointRefused(f"{path}: not a checkpoint key (64 hex digits); fix: delete it (the next save "
                                f"creates a new one; checkpoints sealed with the old key then need "
                                f"`python -m engine.training.checkpoint <checkpoint> --trust-legacy-pickle`)")
    return key


def file_digests(folder: Path, subdir: str) -> dict[str, str]:
    """sha256 of every file under folder/subdir, keyed by its posix path relative to `folder`."""
    digests = {}
    for path in sorted((folder / subdir).rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                digests[path.relative_to(folder).as_posix()] = hashlib.file_digest(fh, "sha256").hexdigest()
    return digests


def _mac(key: bytes, files: dict[str, str]) -> str:
    body = json.dumps({"format": SEAL_FORMAT, "files": files}, sort_keys=True).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def write_seal(folder: Path, subdir: str) -> Path:
    """Seal every file under folder/subdir as written by this machine (creates the key on first use)."""
    files = file_digests(folder, subdir)
    payload = {"format": SEAL_FORMAT, "files": files, "mac": _mac(machine_key(create=True), files)}
    path = folder / SEAL
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def verify_seal(folder: Path, subdir: str, fix: str) -> None:
    """Raise CheckpointRefused unless folder/subdir holds exactly the files this machine sealed there."""
    path = folder / SEAL
    why = "resume hands DeepSpeed's pickled states (ds/) only to checkpoints this machine wrote and sealed"
    if not path.is_file():
        raise CheckpointRefused(f"{path}: missing, so this checkpoint was copied here or written before checkpoints "
                                f"were sealed; {why}; fix: {fix}")
    try:
        seal = json.loads(path.read_text(encoding="utf-8"))
        files, mac = dict(seal["files"]), str(seal["mac"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointRefused(f"{path}: not a seal this engine wrote; {why}; fix: {fix}") from None
    key = machine_key(create=False)
    if key is None or not hmac.compare_digest(mac, _mac(key, files)):
        raise CheckpointRefused(f"{path}: sealed by another machine or key (this one: {key_path()}); {why}; fix: {fix}")
    actual = file_digests(folder, subdir)
    for name in sorted(set(files) | set(actual)):
        if name not in actual:
            raise CheckpointRefused(f"{folder / name}: sealed but missing; {why}; fix: {fix}")
        if name not in files:
            raise CheckpointRefused(f"{folder / name}: not in {SEAL} (added after this machine wrote the "
                                    f"checkpoint); {why}; fix: remove it, or {fix}")
        if actual[name] != files[name]:
            raise CheckpointRefused(f"{folder / name}: changed since this machine wrote it (sha256 differs from "
                                    f"{SEAL}); {why}; fix: {fix}")
