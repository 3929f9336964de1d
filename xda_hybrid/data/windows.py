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

__all__ = ["PRELOAD_BYTES", "TimeWindows", "window_loader", "window_starts"]

#: sources up to this size (float64 bytes of the variables read) are preloaded by default
PRELOAD_BYTES = 64 * 2**20
#: a lazy (dask) source read in time order is read ahead in blocks of about this many bytes
READAHEAD_BYTES = 32 * 2**20


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
    preload : bool, optional
        Read the variables into memory once and cut the windows xbatcher
        defines with numpy slicing (xarray indexing costs ~0.25 ms per window,
        too much next to a cheap training step such as Lorenz96's).  Default:
        preload sources that are not dask-backed and hold at most
        :data:`PRELOAD_BYTES`; dask-backed sources are always read lazily.
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
        preload: bool | None = None,
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
        self._lazy = any(hasattr(sub[v].data, "dask") for v in sub.data_vars)
        names = self.variables + std_vars
        if preload is None:
            preload = not self._lazy and sum(sub[n].size for n in names) * 8 <= PRELOAD_BYTES
        self._memory = None
        self._block = None  # (first frame, end frame, arrays): read-ahead cache of a lazy source
        frame_bytes = 8 * sum(int(np.prod([sub[n].sizes[d] for d in sub[n].dims if d != "time"])) for n in names)
        self._block_frames = max(self.window, READAHEAD_BYTES // max(frame_bytes, 1))
        if preload:
            ref = sub[self.variables[0]]
            self._memory = [np.asarray((sub[n] if n in self.variables else sub[n].broadcast_like(ref).transpose(*ref.dims)).values,
                                       dtype=np.float64) for n in names]
        input_dims = {"time": self.window, **{d: sub.sizes[d] for d in self.spatial_dims}}
        self._batches = xbatcher.BatchGenerator(
            sub, input_dims=input_dims, input_overlap={"time": self.window - self.stride}, preload_batch=False
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

    def _check_index(self, i: int) -> int:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range ({len(self)} windows)")
        return i % len(self)

    def _raw(self, indices: Sequence[int]) -> list[list[np.ndarray]]:
        """Per window, the arrays of the variables then of the std variables.

        Preloaded sources are sliced in memory.  A lazy (dask) source read in
        time order (``fit``'s collection pass, ``assimilate``) is read ahead in
        blocks of :data:`READAHEAD_BYTES` (one ``dask.compute`` per block).
        Otherwise isolated windows are read through xbatcher one by one and
        runs of overlapping or adjacent windows as one time span each, all
        lazy reads of a request in a single ``dask.compute``.
        """
        import dask

        names = self.variables + [s for s in self.noise_std if isinstance(s, str)]
        starts = [self.starts[i] for i in indices]
        if self._memory is not None:
            return [[a[s : s + self.window] for a in self._memory] for s in starts]
        if self._lazy:
            a0, b0 = min(starts), max(starts) + self.window
            blk = self._block
            if blk is None or not (blk[0] <= a0 and b0 <= blk[1]):
                if b0 - a0 <= self._block_frames:  # sequential access: read ahead one block
                    b1 = min(self.n_time, max(b0, a0 + self._block_frames))
                    part = self._sub.isel(time=slice(a0, b1))
                    ref = part[self.variables[0]]
                    lazy = [part[n].data if n in self.variables else part[n].broadcast_like(ref).transpose(*ref.dims).data
                            for n in names]
                    arrays = [np.asarray(x, dtype=np.float64) for x in dask.compute(*lazy, scheduler="synchronous")]
                    self._block = blk = (a0, b1, arrays)
                else:
                    blk = None
            if blk is not None:
                a = blk[0]
                return [[arr[s - a : s - a + self.window] for arr in blk[2]] for s in starts]
        spans: list[list[int]] = []  # [first frame, end frame, window index or -1 for a merged span]
        for i, s in sorted(zip(indices, starts), key=lambda p: p[1]):
            if spans and s <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], s + self.window)
                spans[-1][2] = -1
            else:
                spans.append([s, s + self.window, i])
        lazy = []
        for a, b, i in spans:
            part = self._window_dataset(i) if i >= 0 else self._sub.isel(time=slice(a, b))
            ref = part[self.variables[0]]
            lazy.append([part[n].data if n in self.variables else part[n].broadcast_like(ref).transpose(*ref.dims).data
                         for n in names])
        flat = [x for group in lazy for x in group]
        if self._lazy:
            flat = list(dask.compute(*flat, scheduler="synchronous"))
        k = len(names)
        arrays = [[np.asarray(x, dtype=np.float64) for x in flat[j * k : (j + 1) * k]] for j in range(len(spans))]
        out = []
        for s in starts:
            j = next(j for j, (a, b, _) in enumerate(spans) if a <= s and s + self.window <= b)
            a = spans[j][0]
            out.append([arr[s - a : s - a + self.window] for arr in arrays[j]])
        return out

    def _convert(self, raw: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        std_arrays = iter(raw[len(self.variables):])
        vals, ivs = [], []
        for v, std in zip(raw[: len(self.variables)], self.noise_std):
            missing = np.isnan(v)
            if isinstance(std, str):
                s = next(std_arrays)
                ok = ~missing & np.isfinite(s) & (s > 0)
                iv = np.where(ok, 1.0 / np.where(ok, s, 1.0) ** 2, 0.0)
            else:
                iv = np.where(missing, 0.0, 1.0 / float(std) ** 2)
                ok = ~missing
            vals.append(np.where(ok, v, np.nan))
            ivs.append(iv)
        return np.stack(vals, 1).astype(self.dtype), np.stack(ivs, 1).astype(self.dtype)

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(values, inv_var)`` numpy arrays of window ``i``, each ``(window, C, *space)``."""
        i = self._check_index(i)
        return self._convert(self._raw([i])[0])

    def _item(self, i: int, raw: list[np.ndarray]) -> dict[str, torch.Tensor]:
        values, inv_var = self._convert(raw)
        return {
            "values": torch.from_numpy(values),
            "inv_var": torch.from_numpy(inv_var),
            "start": torch.tensor(self.starts[i], dtype=torch.int64),
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = self._check_index(i)
        return self._item(i, self._raw([i])[0])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """Several windows at once (used by ``DataLoader``): a dask-backed source is computed in one pass."""
        idx = [self._check_index(i) for i in indices]
        return [self._item(i, r) for i, r in zip(idx, self._raw(idx))]

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Several windows stacked along a new leading axis (same keys as an item)."""
        items = self.__getitems__(list(indices))
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
