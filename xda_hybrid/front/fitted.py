"""The result of ``ds.da4d.fit``: a trained inversion network with its model, saved safely.

A :class:`Fitted` holds the inversion network, the dynamical model (with any
learned physical parameter), the window length, the observed variables and the
training history.  :meth:`Fitted.save` writes a plain dict of tensors, numbers
and one JSON string (loadable with ``torch.load(weights_only=True)``, no
pickled code) plus a SHA-256 digest of the whole content; :func:`load`
refuses a file that does not load under ``weights_only=True``, is not an
xda-hybrid file, or whose digest does not match (altered after saving).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from ..models import get_model
from ..models.base import DynamicalModel

__all__ = ["Fitted", "load"]

FORMAT = "xda-hybrid/fitted"
VERSION = 1


class Fitted:
    """A trained learned inversion (returned by ``ds.da4d.fit``; use with ``ds.da4d.assimilate``).

    Attributes
    ----------
    network : InversionNetwork
        ``F_θ(Y, R⁻¹) → x̂₀``.
    model : DynamicalModel
        The dynamics (learned parameters included).
    window : int
        Frames per window the network was trained on.
    obs_vars : list of str
        Observation variables read (``<state>_obs``).
    method : str
        ``"learned"`` (trained on the 4DVAR cost) or ``"over4dvar"`` (fitted to 4DVAR analyses).
    history : xarray.Dataset
        Per ``epoch``: ``train_cost``, ``val_obs_cost`` (NaN without validation),
        ``lr``, ``epoch_time`` and the value of each learned parameter.
    parameters : dict
        Final values of the learned physical parameters (empty if none).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        model: DynamicalModel,
        *,
        model_name: str | None,
        model_params: dict[str, Any],
        geometry: dict[str, float],
        window: int,
        obs_vars: list[str],
        spatial_dims: tuple[str, ...],
        method: str,
        weights: dict[str, float],
        learned: list[str],
        history: list[dict[str, Any]],
        info: dict[str, Any] | None = None,
    ):
        self.network = network
        self.model = model
        self.model_name = model_name
        self.model_params = dict(model_params)
        self.geometry = dict(geometry)
        self.window = int(window)
        self.obs_vars = list(obs_vars)
        self.spatial_dims = tuple(spatial_dims)
        self.method = method
        self.weights = dict(weights)
        self.learned = list(learned)
        self._history = list(history)
        self.info = dict(info or {})

    # ------------------------------------------------------------------ views
    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self.model.state_names)

    @property
    def parameters(self) -> dict[str, float | list]:
        """Learned physical parameters of the model: ``{name: value}``."""
        out: dict[str, float | list] = {}
        phys = self.model.physical_parameters
        for n in self.learned:
            t = phys[n].detach().cpu()
            out[n] = float(t) if t.numel() == 1 else t.tolist()
        return out

    @property
    def history(self) -> xr.Dataset:
        """Training history as a Dataset on the ``epoch`` dimension."""
        h = self._history
        epochs = np.array([int(e["epoch"]) for e in h], dtype=np.int64)

        def col(key):
            return np.array([np.nan if e.get(key) is None else float(e[key]) for e in h], dtype=np.float64)

        data = {
            "train_cost": ("epoch", col("train_cost"), {"long_name": "mean training loss per window",
                                                        "comment": "4DVAR cost of the network's analyses (method learned) "
                                                                   "or squared error to 4DVAR analyses (over4dvar)"}),
            "val_obs_cost": ("epoch", col("val_obs_cost"), {"long_name": "mean observation misfit per validation window"}),
            "lr": ("epoch", col("lr"), {"long_name": "network learning rate"}),
            "epoch_time": ("epoch", col("time"), {"long_name": "wall time of the epoch", "units": "s"}),
        }
        for n in self.learned:
            vals = [e.get("parameters", {}).get(n) for e in h]
            data[n] = ("epoch", np.array([np.nan if v is None else float(v) for v in vals]),
                       {"long_name": f"learned model parameter {n}"})
        return xr.Dataset(data, coords={"epoch": epochs},
                          attrs={"method": self.method, "model": str(self.model_name), "window": self.window})

    def __repr__(self) -> str:
        h = self._history
        last = f", final train cost {h[-1]['train_cost']:.4g}" if h else ""
        par = f", learned {self.parameters}" if self.learned else ""
        return (f"Fitted({self.method}, model={self.model_name or type(self.model).__name__}, window={self.window}, "
                f"observed={self.obs_vars}, epochs={len(h)}{last}{par})")

    # ------------------------------------------------------------------ persistence
    def _meta(self) -> dict[str, Any]:
        return {
            "network_config": self.network.config,
            "model_name": self.model_name,
            "model_params": self.model_params,
            "geometry": self.geometry,
            "window": self.window,
            "obs_vars": self.obs_vars,
            "spatial_dims": list(self.spatial_dims),
            "method": self.method,
            "weights": self.weights,
            "learned": self.learned,
            "history": self._history,
            "info": self.info,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (atomically); read back with :func:`xda_hybrid.load`.

        Raises
        ------
        ValueError
            If the model is an instance of an unregistered class (it could not be rebuilt).
        """
        if self.model_name is None:
            raise ValueError(
                f"cannot save a fit of an unregistered model class {type(self.model).__name__}: "
                "register it in xda_hybrid.models or keep the Fitted object in memory"
            )
        from ..learning.checkpoints import save_checkpoint

        try:
            meta = json.dumps(self._meta(), sort_keys=True, allow_nan=True)
        except TypeError as e:
            raise ValueError(f"model_params must be JSON-serialisable to save: {e}") from None
        net_state = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}
        model_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        payload = {"format": FORMAT, "version": VERSION, "meta": meta, "network": net_state, "model": model_state}
        payload["sha256"] = _digest(payload)
        return save_checkpoint(payload, path)


def _digest(payload: dict[str, Any]) -> str:
    """SHA-256 of the format, version, metadata and every tensor (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    h.update(f"{payload['format']}|{payload['version']}|".encode())
    h.update(payload["meta"].encode())
    for group in ("network", "model"):
        for k in sorted(payload[group]):
            t = payload[group][k].detach().cpu().contiguous()
            h.update(f"|{group}.{k}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> Fitted:
    """Read a :class:`Fitted` written by :meth:`Fitted.save`.

    Loading uses ``torch.load(weights_only=True)``: no code from the file is
    ever run.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not an xda-hybrid fitted file, unsafe content, corrupted, or altered
        after saving (digest mismatch).
    """
    from ..learning import InversionNetwork
    from ..motion.learned import MotionInversionNetwork

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no fitted file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError (zip), EOFError, ...
        raise ValueError(
            f"{path} is not a loadable xda-hybrid fitted file (corrupted, or holds objects other than "
            f"plain tensors/containers, which are refused): {type(e).__name__}: {str(e)[:200]}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an xda-hybrid fitted file (format tag missing)")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path} has fitted-file version {payload.get('version')}; this xda-hybrid reads {VERSION}")
    try:
        ok = isinstance(payload.get("meta"), str) and payload.get("sha256") == _digest(payload)
    except Exception:  # noqa: BLE001
        ok = False
    if not ok:
        raise ValueError(f"{path} was altered after it was saved (SHA-256 digest mismatch): refusing to load it")
    meta = json.loads(payload["meta"])
    model = get_model(meta["model_name"], **meta["model_params"])
    model.load_state_dict(payload["model"])
    if meta["learned"]:
        model.learn(meta["learned"])
    config = meta["network_config"]
    net = (MotionInversionNetwork if "velocity" in config else InversionNetwork).from_config(config)
    net.load_state_dict(payload["network"])
    dtype = next(iter(payload["network"].values())).dtype
    net.to(dtype=dtype)
    net.eval()
    if device is not None:
        net.to(device)
    return Fitted(
        net, model, model_name=meta["model_name"], model_params=meta["model_params"], geometry=meta["geometry"],
        window=meta["window"], obs_vars=meta["obs_vars"], spatial_dims=tuple(meta["spatial_dims"]),
        method=meta["method"], weights=meta["weights"], learned=meta["learned"], history=meta["history"],
        info=meta["info"],
    )
