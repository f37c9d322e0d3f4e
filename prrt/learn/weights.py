"""Encoder weights from a file (ours, or e.g. a MONAI ResNet's from elsewhere) put into an encoder.

:func:`load_encoder_weights` loads a state dict from a file or a dict into an encoder, mapping key
prefixes (:func:`map_keys`; ``OLD=NEW`` as :func:`parse_prefix_map` reads it); missing, unexpected or
mis-shaped keys raise :class:`WeightsError` listing them. :func:`state_dict_of` finds the state dict in
a saved object (a dict of tensors, or one under ``encoder`` or ``state_dict``).
"""

from __future__ import annotations

import torch
from torch import nn


class WeightsError(ValueError):
    """Encoder weights that do not fit the encoder; the message lists every key that does not."""


# ---- loading weights -------------------------------------------------------------------------------
def parse_prefix_map(items) -> dict[str, str]:
    """``["module.=", "=net."]`` → ``{"module.": "", "": "net."}`` (old prefix = new prefix)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"key prefix mapping {item!r} must read OLD=NEW (either side may be empty)")
        old, new = item.split("=", 1)
        out[old] = new
    return out


def state_dict_of(obj, path) -> dict:
    if isinstance(obj, dict) and "encoder" in obj and isinstance(obj["encoder"], dict):
        return obj["encoder"]
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise WeightsError(f"{path}: no state dict found (expected a dict of tensors, or one under 'encoder' or "
                       "'state_dict')")


def map_keys(state: dict, prefix_map: dict[str, str]) -> dict:
    """Rename keys by the first matching old prefix (longest first); an empty old prefix matches every key."""
    rules = sorted(prefix_map.items(), key=lambda kv: -len(kv[0]))
    out = {}
    for k, v in state.items():
        for old, new in rules:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def load_encoder_weights(encoder: nn.Module, weights, prefix_map: dict[str, str] | None = None,
                         name: str = "CT") -> dict:
    """Load a state dict from ``weights`` (a file or a dict) into ``encoder``; returns what was loaded.

    Every key of the encoder must be in the file with the same shape and the file may hold no other
    key; otherwise :class:`WeightsError` lists the missing, unexpected and mis-shaped keys (after
    ``prefix_map``, e.g. ``{"module.": ""}`` to drop a DataParallel prefix).
    """
    path = weights if not isinstance(weights, dict) else "the given state dict"
    obj = weights if isinstance(weights, dict) else torch.load(weights, map_location="cpu", weights_only=True)
    state = map_keys(state_dict_of(obj, path), prefix_map or {})
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted((k, tuple(state[k].shape), tuple(own[k].shape)) for k in set(own) & set(state)
                    if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        lines = [f"{path}: the weights do not fit the {name} encoder "
                 f"({type(encoder).__name__}, {len(own)} keys; the file has {len(state)})"]
        if missing:
            lines.append(f"  missing from the file ({len(missing)}): " + ", ".join(missing[:20])
                         + (" …" if len(missing) > 20 else ""))
        if unexpected:
            lines.append(f"  unexpected in the file ({len(unexpected)}): " + ", ".join(unexpected[:20])
                         + (" …" if len(unexpected) > 20 else ""))
        for k, a, b in shapes[:20]:
            lines.append(f"  shape mismatch: {k}: file {a} vs encoder {b}")
        lines.append("  map key prefixes with OLD=NEW (e.g. 'module.=' or '=net.') if only the names differ")
        raise WeightsError("\n".join(lines))
    encoder.load_state_dict(state)
    return {"keys": len(state), "source": str(path)}
