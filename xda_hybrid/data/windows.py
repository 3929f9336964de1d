"""Time windows of observations cut with xbatcher, as torch tensors.

:class:`TimeWindows` slices a Dataset into windows of ``window`` frames every
``stride`` frames along ``time`` (xbatcher's ``BatchGenerator`` on a Dataset —
never a DataArray, see STACK.md) and converts each window to tensors itself
(``torch.from_numpy``; xbatcher's torch accessor is broken with torch ≥ 2.6).
It is a :class:`torch.utils.data.Dataset`, so :func:`window_loader` streams
windows to a training loop through a standard ``DataLoader``; each window is
read from the source only when asked for (a dask-backed Dataset is computed
window by window).

Each item is a dict of tensors, for ``C`` observation variables:

* ``values``  — ``(window, C, *space)``, NaN where missing;
* ``inv_var`` — ``(window, C, *space)``, ``1/σ²`` where observed, 0 elsewhere;
* ``start``   — index of the window's first frame (int64 scalar).

No training internals here: what the windows are used for is the caller's business.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import xarray as xr

__all__ = ["TimeWindows", "window_loader", "window_starts"]


def window_starts(n_time: int, window: int, stride: int, cover_end: bool = False) -> list[int]:
    """First frames of the windows: ``0, stride, 2·stride, …`` while the window fits.

    With ``cover_end`` a last window ending on the last frame is added when the
    regular ones leave frames uncovered at the end.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    if window > n_time:
        raise ValueError(f"window of {window} frames is longer than the data ({n_time} frames)")
    starts = list(range(0, n_time - window + 1, stride))
    if cover_end and starts[-1] + window < n_time:
        starts.append(n_time - window)
    return starts


class TimeWindows(torch.utils.data.Dataset):
    """Observation windows of a Dataset, cut with xbatcher.

    Parameters
    ----------
    ds : xarray.Dataset
        Holds the observation variables (and per-point std variables); may be dask-backed.
    variables : sequence of str
        Observation variables, each with dims ``("time", *spatial_dims)`` in any order.
    window : int
        Frames per window.
    stride : int
        Frames between consecutive window starts.
    spatial_dims : sequence of str
        Spatial dimensions, in the order of the output's trailing axes.
    noise_std : sequence of (float or str)
        Per variable: the error std (a number > 0) or the name of a variable of
        ``ds`` holding it per point (NaN/≤ 0 there counts as unobserved).
    cover_end : bool
        Add a last window ending on the last frame if the regular ones do not reach it.
    dtype : numpy dtype
        Dtype of the returned tensors (float32 by default).
    """

    def __init__(
        self,
        ds: xr.Dataset,
        variables: Sequence[str],
        window: int,
        stride: int,
        spatial_dims: Sequence[str],
        noise_std: Sequence[float | str],
        cover_end: bool = False,
        dtype=np.float32,
    ):
        import xbatcher

        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"expected an xarray.Dataset, got {type(ds).__name__}")
        self.variables = list(variables)
        if len(noise_std) != len(self.variables):
            raise ValueError("give one noise_std per variable")
        self.spatial_dims = tuple(spatial_dims)
        dims = ("time", *self.spatial_dims)
        std_vars = [s for s in noise_std if isinstance(s, str)]
        sub = ds[self.variables + std_vars].drop_vars(
            [c for c in ds.coords if c not in dims], errors="ignore"
        ).transpose(*dims, missing_dims="ignore")
        self.noise_std = list(noise_std)
        self.window, self.stride = int(window), int(stride)
        self.n_time = sub.sizes["time"]
        self.dtype = np.dtype(dtype)
        self.starts = window_starts(self.n_time, self.window, self.stride, cover_end)
        self._regular = len(range(0, self.n_time - self.window + 1, self.stride))
        self._sub = sub
        input_dims = {"time": self.window, **{d: sub.sizes[d] for d in self.spatial_dims}}
        self._batches = xbatcher.BatchGenerator(
            sub, input_dims=input_dims, input_overlap={"time": self.window - self.stride}
        )
        if len(self._batches) != self._regular:  # pragma: no cover - xbatcher behaviour change
            raise RuntimeError(f"xbatcher made {len(self._batches)} windows, expected {self._regular}")

    def __len__(self) -> int:
        return len(self.starts)

    def _window_dataset(self, i: int) -> xr.Dataset:
        if i < self._regular:
            return self._batches[i]
        s = self.starts[i]
        return self._sub.isel(time=slice(s, s + self.window))

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(values, inv_var)`` numpy arrays of window ``i``, each ``(window, C, *space)``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range ({len(self)} windows)")
        i = i % len(self)
        w = self._window_dataset(i)
        vals, ivs = [], []
        for var, std in zip(self.variables, self.noise_std):
            v = np.asarray(w[var].values, dtype=np.float64)
            missing = np.isnan(v)
            if isinstance(std, str):
                s = np.asarray(w[std].broadcast_like(w[var]).transpose(*w[var].dims).values, dtype=np.float64)
                ok = ~missing & np.isfinite(s) & (s > 0)
                iv = np.where(ok, 1.0 / np.where(ok, s, 1.0) ** 2, 0.0)
            else:
                iv = np.where(missing, 0.0, 1.0 / float(std) ** 2)
                ok = ~missing
            vals.append(np.where(ok, v, np.nan))
            ivs.append(iv)
        return np.stack(vals, 1).astype(self.dtype), np.stack(ivs, 1).astype(self.dtype)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        values, inv_var = self.arrays(int(i))
        return {
            "values": torch.from_numpy(values),
            "inv_var": torch.from_numpy(inv_var),
            "start": torch.tensor(self.starts[int(i) % len(self)], dtype=torch.int64),
        }

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Several windows stacked along a new leading axis (same keys as an item)."""
        items = [self[i] for i in indices]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def window_loader(
    windows: TimeWindows,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` of batches ``{"values", "inv_var", "start"}`` with a leading batch axis.

    ``shuffle`` draws the order from a generator seeded with ``seed``.
    """
    gen = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return torch.utils.data.DataLoader(
        windows, batch_size=int(batch_size), shuffle=shuffle, generator=gen, num_workers=num_workers
    )
