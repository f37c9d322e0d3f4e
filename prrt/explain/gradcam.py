"""Grad-CAM maps of the image models: the layer, the maps, and the finer grid they are shown on.

Grad-CAM (Selvaraju et al. 2017) through MONAI's :class:`monai.visualize.GradCAM` (:func:`gradcam_maps`):
the gradient of the short-PFS logit with respect to a convolutional layer's activations, averaged over
space, weighs the layer's channels; their weighted sum, passed through a ReLU, is the map. MONAI's
default post-processing maps (min, max) to (1, 0), which inverts the map; here every map is scaled to 0-1
by its own minimum and maximum instead (:func:`minmax`; a map that is zero everywhere stays zero).

The layer (:func:`target_layer`): the deepest layer of the encoder whose output still has at least
``min_voxels`` voxels along every axis (the last block of a CNN pools a 32-voxel input down to 4 or 2
voxels, too coarse to say where inside a lesion box the network looked).

:func:`fold_maps` computes the maps of one fold model of a run once and keeps them in
``explain/gradcam/<model>/r{repeat}_f{fold}.npz``, with the checkpoint's SHA-256 and the layer, so that a
changed model is never served stale maps. :func:`upsample` and :func:`display_size` put the maps on the
finer display grid of the figures; :func:`dilate` grows a lesion mask for the numbers of
:mod:`prrt.explain.saliency`. :func:`randomisation_steps`, :func:`reinitialise` and :func:`randomised` give a
network's layers from the top and re-initialise them: the sanity checks and the randomised-weights null of the
saliency numbers.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..learn import checkpoint_path
from ..provenance import file_sha256
from ..timing import phase


# ---- Grad-CAM --------------------------------------------------------------------------------------
class _Logit2D(nn.Module):
    """A one-logit classifier as MONAI's CAM classes expect it: output (N, 1), class index 0."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).reshape(len(x), -1)


def candidate_layers(net: nn.Module) -> list[str]:
    """The layers Grad-CAM may use, in forward order: the output of each block of the encoder.

    The compact CNN: each block's activation (before its pooling); a MONAI ResNet: its ``layer1`` ...
    ``layer4``; a DenseNet: its dense blocks. Names are those of ``net.named_modules()``.
    """
    names = []
    for name, mod in net.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, (nn.LeakyReLU, nn.ReLU)) and ".body." in f".{name}":
            names.append(name)
        elif leaf in ("layer1", "layer2", "layer3", "layer4") or leaf.startswith("denseblock"):
            names.append(name)
    return names


def layer_shapes(net: nn.Module, input_shape, layers: list[str]) -> dict[str, tuple]:
    """The spatial shape of each layer's output for one input of ``input_shape`` (C, X, Y, Z)."""
    shapes, hooks = {}, []
    mods = dict(net.named_modules())
    for name in layers:
        hooks.append(mods[name].register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[2:]))))
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros((1, *input_shape), device=next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        net.train(was)
    return shapes


def target_layer(net: nn.Module, input_shape, min_voxels: int = 8) -> str:
    """The deepest candidate layer (:func:`candidate_layers`) whose output has at least ``min_voxels``
    voxels along every axis (the first one when none has)."""
    layers = candidate_layers(net)
    if not layers:
        raise ValueError("no convolutional block found for Grad-CAM in this network")
    shapes = layer_shapes(net, input_shape, layers)
    fine = [name for name in layers if min(shapes[name]) >= min_voxels]
    return fine[-1] if fine else layers[0]


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map (N, 1, ...) to 0-1 by its own minimum and maximum; a flat map becomes zero."""
    flat = maps.reshape(len(maps), -1)
    lo = flat.min(dim=1).values.view(-1, *[1] * (maps.dim() - 1))
    hi = flat.max(dim=1).values.view(-1, *[1] * (maps.dim() - 1))
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(maps))


def gradcam_maps(net: nn.Module, x: torch.Tensor, layer: str, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps of the short-PFS logit of ``net`` for the images ``x`` (N, C, X, Y, Z): where the
    evidence for a short PFS lies, in every patient (also in a patient predicted to do well).

    Returns (N, X, Y, Z) float32 in [0, 1], upsampled (trilinear) to the input grid and min-max scaled
    per map. ``net`` is not changed (a copy carries MONAI's hooks); it runs on the device it is on.
    """
    from monai.visualize import GradCAM

    model = _Logit2D(copy.deepcopy(net)).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    device = next(model.parameters()).device
    cam = GradCAM(model, target_layers=f"net.{layer}", postprocessing=minmax)
    out = []
    for i in range(0, len(x), batch_size):
        with torch.enable_grad(), phase("Grad-CAM"):
            out.append(cam(x[i:i + batch_size].float().to(device), class_idx=0).detach()[:, 0].cpu())
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, *x.shape[2:]), np.float32)


def randomisation_steps(net: nn.Module) -> list[list[str]]:
    """The network's layers with weights, grouped from the top (output) to the bottom (input):
    a convolution or linear layer together with the normalisation that follows it."""
    leaves = [(n, m) for n, m in net.named_modules()
              if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]
    groups: list[list[str]] = []
    for name, mod in leaves:
        is_norm = isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                                   nn.GroupNorm, nn.LayerNorm))
        if is_norm and groups:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups[::-1]


def reinitialise(net: nn.Module, names: list[str], seed: int) -> None:
    """Re-initialise the layers ``names`` of ``net`` in place with their own initialisation scheme (seeded)."""
    mods = dict(net.named_modules())
    with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
        torch.manual_seed(seed)
        for name in names:
            mod = mods[name]
            if hasattr(mod, "reset_running_stats"):
                mod.reset_running_stats()
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()


def randomised(net: nn.Module, seed: int) -> nn.Module:
    """A copy of ``net`` with every layer re-initialised (:func:`randomisation_steps`, all of them): the same
    architecture that has learnt nothing."""
    work = copy.deepcopy(net)
    for step, names in enumerate(randomisation_steps(work), start=1):
        reinitialise(work, names, seed + step)
    return work


def upsample(maps: np.ndarray, size_voxels) -> np.ndarray:
    """Maps (N, X, Y, Z) on the input grid, trilinearly resampled to a finer grid over the same extent
    (voxel edges aligned: ``align_corners=False``), as :func:`prrt.imaging.display_arrays` makes it."""
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(maps, np.float32))[:, None]
    return F.interpolate(t, size=tuple(int(s) for s in size_voxels), mode="trilinear", align_corners=False)[:, 0].numpy()


def display_size(profile) -> tuple:
    """The display grid of the overlays: the input grid refined by a whole factor (about the profile's
    display size)."""
    factor = max(1, round(max(profile.display_size_voxels) / max(profile.input_size_voxels)))
    return tuple(int(s) * factor for s in profile.input_size_voxels)


# ---- numbers that can fail --------------------------------------------------------------------------
def dilate(mask: np.ndarray, voxels: int = 1) -> np.ndarray:
    """The binary mask grown by ``voxels`` voxels (a 3×3×3 cube per step)."""
    from scipy.ndimage import binary_dilation

    mask = np.asarray(mask) > 0
    return binary_dilation(mask, np.ones((3, 3, 3), bool), iterations=voxels) if voxels > 0 and mask.any() else mask


# ---- the run's image models: maps per fold model, cached in the run ----------------------------------------
def fold_maps(run_dir, name: str, repeat: int, fold: int, net: nn.Module, x: torch.Tensor, patients: list[str],
              layer: str) -> np.ndarray:
    """The Grad-CAM maps of one fold model (``name``, ``repeat``, ``fold``) for ``patients``, computed
    once and kept in ``explain/gradcam/<name>/r{repeat}_f{fold}.npz`` (float16, with the checkpoint's
    SHA-256 and the layer, so that a changed model is never served stale maps)."""
    from pathlib import Path

    sha = file_sha256(checkpoint_path(run_dir, name, repeat, fold))
    file = Path(run_dir) / "explain" / "gradcam" / name / f"r{repeat}_f{fold}.npz"
    if file.is_file():
        with np.load(file) as z:
            if str(z["checkpoint_sha256"]) == sha and str(z["layer"]) == layer and list(z["patients"]) == list(patients):
                return z["maps"].astype(np.float32)
    with phase("Grad-CAM", model=name):
        maps = gradcam_maps(net, x, layer)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".partial.npz")
    np.savez_compressed(tmp, maps=maps.astype(np.float16), patients=np.array(patients), layer=np.array(layer),
                        checkpoint_sha256=np.array(sha))
    tmp.replace(file)
    return maps
