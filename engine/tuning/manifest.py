"""Adapter folders as versioned artefacts: their manifest, their hash, and the checks on load.

``salesbot tune`` writes a PEFT adapter folder (``adapter_config.json`` +
``adapter_model.safetensors``) and beside it ``salesbot-manifest.json``: which base model, which
training data and which script library the adapter was trained on, with which hyperparameters,
how it scored, and the hash of the adapter files themselves. The hash makes an adapter an
artefact that can be audited: every compliance audit row records it, and a file changed after
training (by hand, by a bad copy) no longer matches its manifest and is refused.

Pure Python on purpose (json, hashlib): the flow loader checks adapters without importing torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from engine.errors import SalesbotError
from engine.hashing import file_sha256

MANIFEST = "salesbot-manifest.json"
FORMAT = "salesbot-adapter/1"
ADAPTER_SCHEME = "adapter:v1:"


class AdapterError(SalesbotError):
    """An adapter folder is missing, incomplete, tampered with or made for another base model."""


def adapter_hash(folder: str | Path) -> str:
    """Tagged sha256 over every file of the adapter folder but the manifest (names included), so
    a renamed, added, removed or edited file changes it. Checkpoint sub-folders are skipped."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST and _counted(folder, p)
    )
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        digest.update(file_sha256(path).encode("ascii") + b"\n")
    return ADAPTER_SCHEME + digest.hexdigest()


def _counted(folder: Path, path: Path) -> bool:
    parts = path.relative_to(folder).parts
    return not any(part.startswith(("checkpoint", ".")) for part in parts)


def write_manifest(folder: str | Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Write ``salesbot-manifest.json`` for the adapter files already saved in ``folder``."""
    folder = Path(folder)
    manifest = {"format": FORMAT, **fields, "adapter_hash": adapter_hash(folder)}
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    (folder / MANIFEST).write_text(text, encoding="utf-8")
    return manifest


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an adapter folder; :class:`AdapterError` when missing or unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"{folder}: adapter folder not found (train it with `salesbot tune`)")
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(
            f"{path}: missing; an adapter must be written by `salesbot tune`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise AdapterError(f"{path}: not a salesbot adapter manifest (format {FORMAT!r})")
    return manifest


def verify_adapter(folder: str | Path) -> dict[str, Any]:
    """The manifest, once the files are checked against its adapter hash."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not (folder / "adapter_config.json").is_file():
        raise AdapterError(f"{folder}: adapter_config.json is missing")
    actual = adapter_hash(folder)
    if actual != manifest.get("adapter_hash"):
        raise AdapterError(
            f"{folder}: the adapter files do not match their manifest (adapter hash {actual}, "
            f"manifest says {manifest.get('adapter_hash')}): changed after training; retrain "
            "with `salesbot tune` or restore the files"
        )
    return manifest


def check_base(manifest: dict[str, Any], folder: Path, file_sha256: str | None, weights) -> None:
    """Refuse an adapter trained on another base model. ``file_sha256`` is the served model
    file's hash when known; otherwise ``weights`` (a callable giving the in-memory model's
    fingerprint) is compared, which covers models built in memory."""
    base = manifest.get("base_model") or {}
    if file_sha256 and base.get("sha256"):
        if file_sha256 != base["sha256"]:
            raise AdapterError(
                f"{folder}: trained on base model {base.get('file')} (sha256 {base['sha256'][:16]}"
                f"...), but the backend serves another model (sha256 {file_sha256[:16]}...)"
            )
        return
    if base.get("weights_sha256"):
        actual = weights()
        if actual != base["weights_sha256"]:
            raise AdapterError(
                f"{folder}: trained on other base weights (fingerprint "
                f"{base['weights_sha256'][:16]}..., served {actual[:16]}...)"
            )
