"""The checkpoint folder: save atomically, load strictly, never unpickle.

A folder holds config.json (resolved config, labels, encoders, image preprocessing, versions),
model.safetensors ("full" state dict for offline encoders, "trainable" tensors over published
ones), tokenizer/, and when given metrics.json, history.json and the training state `--resume`
reads (training_state.safetensors + .json), and README.md, the model card (card.py; never read
back). Saving writes a temporary folder beside the target
and swaps it in (docs/RELIABILITY.md), so a kill at any moment leaves the previous one loadable.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel

import clara
from clara.config import Config, ConfigError
from clara.data.provenance import describe_data_folder
from clara.jsonio import to_jsonable
from clara.checkpoint.card import write_model_card
from clara.checkpoint.info import (CONFIG_FIELDS, CONFIG_FILE, FORMAT_VERSION, HISTORY_FILE, METRICS_FILE,  # noqa: F401
                                   OLD_MARK, TMP_MARK, TOKENIZER_DIR, TRAINING_STATE_JSON, TRAINING_STATE_TENSORS,
                                   WEIGHTS_FILE, CheckpointError, aside_copies, checkpoint_config,
                                   read_checkpoint_info, read_json_object, resolve_folder, weights_mode)
from clara.checkpoint.weights_check import WeightsError, check_weights
from clara.locks import lock_temporary_folder, release_temporary_folder, remove_abandoned_folders
from clara.model import EncoderError, create_model
from clara.untrusted import UntrustedFolderError, check_model_folder

MAX_KEYS_SHOWN = 10


@dataclass
class LoadedCheckpoint:
    model: nn.Module  # in eval mode, on the requested device
    tokenizer: Any
    config: Config
    info: dict[str, Any]  # config.json as written (plus "path")

    @property
    def labels(self) -> list[str]:
        return list(self.info["labels"])


# --------------------------------------------------------------------------- what is stored

def _pretrained_prefixes(model: nn.Module) -> list[str]:
    """Name prefixes of the transformers models inside `model` (the encoders' base weights)."""
    return [name + "." for name, module in model.named_modules()
            if name and isinstance(module, PreTrainedModel)]


def stored_state(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint of `model` holds, by state-dict key.

    `full`: the whole state dict; `trainable`: everything except the frozen parameters and the
    buffers of the pretrained encoders (which the hub id / local folder provides). Tensors that
    share storage (tied weights) are stored once, under their first key; loading restores the
    others through the tie.
    """
    state = model.state_dict(keep_vars=True)
    if mode == "trainable":
        prefixes = tuple(_pretrained_prefixes(model))
        trainable = {name for name, param in model.named_parameters() if param.requires_grad}
        state = {key: value for key, value in state.items()
                 if key in trainable or not key.startswith(prefixes)}
    elif mode != "full":
        raise ValueError(f"unknown weights mode {mode!r}: expected full or trainable")
    kept: dict[str, torch.Tensor] = {}
    seen_views: set[tuple[Any, ...]] = set()
    seen_storage: set[tuple[str, int]] = set()
    for key, value in state.items():
        tensor = value.detach()
        storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
        view = (*storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if tensor.numel() and view in seen_views:
            continue  # a tied weight: restored through the tie
        if tensor.numel() and storage in seen_storage:
            tensor = tensor.clone()  # another view of shared memory, which safetensors cannot write
        seen_views.add(view)
        seen_storage.add(storage)
        kept[key] = tensor
    return kept


# --------------------------------------------------------------------------- saving

def save_checkpoint(out_dir: str | Path, model: nn.Module, tokenizer: Any, cfg: Config, *,
                    metrics: Mapping[str, Any] | None = None, history: list[dict[str, Any]] | None = None,
                    extra: Mapping[str, Any] | None = None,
                    training_state: tuple[Mapping[str, torch.Tensor], Mapping[str, Any]] | None = None) -> Path:
    """Write `model`, `tokenizer` and `cfg` as a checkpoint folder at `out_dir`, atomically.

    `training_state` (tensors, JSON payload) is written into the same folder, so the weights
    and the state a resumed run continues from are swapped in together (read_training_state).

    `extra["source"]`, when given, is recorded as config.json's "source" (e.g. an imported
    notebook file); other `extra` entries go to config.json's "extra". An existing folder at
    `out_dir` is replaced only if it is a checkpoint (has config.json) or empty.
    """
    target = Path(out_dir).expanduser()
    _recover_interrupted_swap(target)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / CONFIG_FILE).is_file())):
        raise CheckpointError(f"{target} exists and is not a checkpoint folder; refusing to replace it "
                              "(choose another path or remove it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = weights_mode(cfg)
    tensors = {key: tensor.to("cpu").contiguous() for key, tensor in stored_state(model, mode).items()}
    info = _checkpoint_info(model, cfg, mode, extra)

    remove_abandoned_folders(target.parent, f".*{TMP_MARK}*")  # left by killed saves (clara.locks)
    tmp = target.parent / f".{target.name}{TMP_MARK}{uuid.uuid4().hex[:12]}"
    tmp_lock = lock_temporary_folder(tmp)
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "pt", "clara_format_version": str(FORMAT_VERSION), "weights": mode})
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        _write_json(tmp / CONFIG_FILE, info)
        if metrics is not None:
            _write_json(tmp / METRICS_FILE, metrics)
        if history is not None:
            _write_json(tmp / HISTORY_FILE, history)
        write_model_card(tmp, to_jsonable(info), to_jsonable(metrics), to_jsonable(history))  # README.md
        if training_state is not None:
            state_tensors, state_payload = training_state
            save_file({key: tensor.detach().to("cpu").contiguous() for key, tensor in state_tensors.items()},
                      str(tmp / TRAINING_STATE_TENSORS), metadata={"clara_format_version": str(FORMAT_VERSION)})
            _write_json(tmp / TRAINING_STATE_JSON, state_payload)
        for tensors_file in tmp.glob("*.safetensors"):  # safetensors writes 0600; give the mode config.json got
            tensors_file.chmod((tmp / CONFIG_FILE).stat().st_mode & 0o777)
        _fsync_tree(tmp)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        release_temporary_folder(tmp_lock)
    return target


def _checkpoint_info(model: nn.Module, cfg: Config, mode: str, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    extra = dict(extra or {})
    source = extra.pop("source", None)
    data = extra.pop("data", None) or describe_data_folder(cfg.data.data_dir)  # synthetic or not, and where
    stats = getattr(model, "image_stats", None)
    image = ({"size": int(stats.size), "mean": [float(v) for v in stats.mean], "std": [float(v) for v in stats.std],
              "patch_size": int(stats.patch_size)} if stats is not None else None)
    counts = model.param_counts() if hasattr(model, "param_counts") else {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    encoders = {"kind": cfg.model.encoders, "vision": cfg.model.vision_encoder, "text": cfg.model.text_encoder}
    config = cfg.to_dict()
    built = getattr(model, "config", None)
    for name in ("vision_lora_targets", "text_lora_targets"):  # as resolved for the architecture: a reload is exact
        if isinstance(getattr(built, name, None), tuple):
            config["model"][name] = getattr(built, name)
    return {
        "format_version": FORMAT_VERSION,
        "dataset": cfg.data.dataset,
        "labels": list(cfg.labels),
        "protocol": cfg.data.protocol,
        "encoders": encoders,
        "image": image,
        "params": counts,
        "weights": mode,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source if source is not None else {"kind": "clara"},
        "data": data,
        "extra": extra,
        "config": config,
    }


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version(), "clara": clara.__version__}
    for package in ("torch", "transformers", "peft", "safetensors", "tokenizers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def git_commit() -> str | None:
    """The commit of the clara source tree, or None (no git, not a repository, any failure)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(clara.__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def _write_json(path: Path, payload: Any) -> None:
    # Plain write: the folder being written is swapped in whole (atomic at the folder level).
    path.write_text(json.dumps(to_jsonable(payload), indent=2) + "\n", encoding="utf-8")


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to disk, so the swap never exposes partial files."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _swap_in(tmp: Path, target: Path) -> None:
    """Make `tmp` the folder at `target`; the old folder (if any) is deleted afterwards."""
    if not target.exists():
        os.replace(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous checkpoint
    else:
        old = target.parent / f".{target.name}{OLD_MARK}{uuid.uuid4().hex[:12]}"
        os.replace(target, old)
        os.replace(tmp, target)  # between these two renames the previous checkpoint lives at `old`
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


def _recover_interrupted_swap(target: Path) -> None:
    """Before saving: put back a previous checkpoint that an interrupted save left aside."""
    aside = aside_copies(target)
    if not target.exists() and aside:
        os.replace(aside[0], target)


# --------------------------------------------------------------------------- loading

def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    overrides: Mapping[str, Any] | None = None) -> LoadedCheckpoint:
    """Rebuild the model of a checkpoint folder and load its weights strictly.

    `overrides` ({"model.vision_encoder": "/models/clip", ...}) points published encoders at
    another hub id or local folder, e.g. on an offline machine. Raises CheckpointError naming
    the difference for an incomplete folder, an unknown format or config field, a config that
    does not build the stored tensors (class count, encoder sizes) or missing/unexpected keys.
    """
    info = read_checkpoint_info(path)
    folder = Path(info["path"])
    cfg = checkpoint_config(info)
    if overrides:
        try:
            cfg = cfg.override(dict(overrides))
        except ConfigError as exc:
            raise CheckpointError(f"bad override for {folder}: {exc}") from None
    try:
        check_model_folder(folder)  # before transformers reads it: no code shipped in a checkpoint ever runs
    except UntrustedFolderError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder / TOKENIZER_DIR), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the tokenizer from {folder / TOKENIZER_DIR}: {exc}") from None

    # Trainable parts are initialised from the global RNG and then overwritten: keep the caller's RNG as it was.
    with torch.random.fork_rng(devices=[]):
        try:
            model, tokenizer = create_model(cfg, tokenizer=tokenizer)
        except EncoderError as exc:
            raise CheckpointError(f"cannot rebuild the encoders of {folder}: {exc}") from None
        except (ValueError, RuntimeError) as exc:
            raise CheckpointError(f"config.json of {folder} does not build a model: {exc}") from None

    tensors = _read_weights(folder / WEIGHTS_FILE)
    expected = stored_state(model, info["weights"])
    _check_keys(folder, tensors, expected, cfg)
    try:
        check_weights(tensors, expected)
    except WeightsError as exc:
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: {exc}") from None
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:  # cannot happen after _check_keys; kept as a guard against silent loss
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: unexpected keys {result.unexpected_keys[:MAX_KEYS_SHOWN]}")
    model.to(device)
    model.eval()
    return LoadedCheckpoint(model=model, tokenizer=tokenizer, config=cfg, info=info)


def read_training_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The (tensors, JSON payload) that save_checkpoint's `training_state` wrote into a checkpoint
    folder; CheckpointError when the folder has none or they are unreadable."""
    folder = resolve_folder(Path(path).expanduser())
    for name in (TRAINING_STATE_JSON, TRAINING_STATE_TENSORS):
        if not (folder / name).is_file():
            raise CheckpointError(f"no {name} in {folder}: it holds no training state to resume from "
                                  "(written by an older clara, or not the last checkpoint of a training run)")
    payload = read_json_object(folder / TRAINING_STATE_JSON)
    return _read_weights(folder / TRAINING_STATE_TENSORS), payload


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            return {key: file.get_tensor(key) for key in file.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}): incomplete or damaged "
                              "checkpoint") from None


def _shown(keys: list[str]) -> str:
    more = f" and {len(keys) - MAX_KEYS_SHOWN} more" if len(keys) > MAX_KEYS_SHOWN else ""
    return ", ".join(keys[:MAX_KEYS_SHOWN]) + more


def _check_keys(folder: Path, stored: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                cfg: Config) -> None:
    weights = folder / WEIGHTS_FILE
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_shown(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_shown(unexpected)})")
        raise CheckpointError(f"{weights} does not match the model config.json describes (encoders "
                              f"{cfg.model.encoders}, fusion {cfg.model.fusion}, variant {cfg.model.variant}): "
                              + "; ".join(parts))
    for key, tensor in expected.items():
        if tuple(stored[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{weights} does not match config.json: {key} has shape {tuple(stored[key].shape)} in the weights "
                f"but {tuple(tensor.shape)} in the model config.json describes ({len(cfg.labels)} classes for "
                f"{cfg.data.dataset}, encoders {cfg.model.encoders}); was config.json edited or copied from "
                "another checkpoint?")
