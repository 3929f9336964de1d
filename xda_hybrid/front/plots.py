"""Figures of analyses and training runs (matplotlib, Agg canvas: no display needed).

Every function builds a :class:`matplotlib.figure.Figure` without pyplot (so it
neither needs nor changes the interactive backend), saves it when ``path`` is
given, and returns it.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["plot_errors", "plot_history", "plot_velocity"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike | None, dpi: int = 110):
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def _frame(da: xr.DataArray, time: Any) -> xr.DataArray:
    if isinstance(time, (int, np.integer)):
        return da.isel(time=int(time))
    return da.sel(time=time, method="nearest")


def _axis(da: xr.DataArray, dim: str) -> tuple[np.ndarray, str]:
    """Coordinate values for plotting (metres shown in km) and the axis label."""
    if dim not in da.coords:
        return np.arange(da.sizes[dim]), dim
    units = str(da[dim].attrs.get("units", ""))
    vals = np.asarray(da[dim].values, dtype=float)
    if units in ("m", "metre", "metres", "meter", "meters"):
        return vals / 1e3, f"{dim} [km]"
    return vals, f"{dim} [{units}]" if units else dim


def _velocity_panel(ax, u: xr.DataArray, v: xr.DataArray, vmax: float, title: str, arrows: int, streamlines: bool):
    x, xlabel = _axis(u, "x")
    y, ylabel = _axis(u, "y")
    uu, vv = np.asarray(u.transpose("y", "x").values, float), np.asarray(v.transpose("y", "x").values, float)
    speed = np.hypot(uu, vv)
    im = ax.pcolormesh(x, y, speed, shading="auto", vmin=0, vmax=vmax, cmap="viridis")
    if streamlines and np.isfinite(uu).all() and len(x) > 2 and len(y) > 2:
        ax.streamplot(x, y, uu, vv, color="white", linewidth=0.6, density=1.0, arrowsize=0.7)
    else:
        sy, sx = max(1, len(y) // arrows), max(1, len(x) // arrows)
        ax.quiver(x[::sx], y[::sy], uu[::sy, ::sx], vv[::sy, ::sx], color="white", scale=vmax * arrows * 1.2,
                  scale_units="width", width=0.004)
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return im


def plot_velocity(
    analyses: xr.Dataset | dict[str, xr.Dataset],
    truth: xr.Dataset | None = None,
    time: Any = 0,
    path: str | os.PathLike | None = None,
    arrows: int = 16,
    streamlines: bool = False,
):
    """Speed maps with velocity arrows (or streamlines): the truth (if given) and each analysis.

    Parameters
    ----------
    analyses : Dataset or dict of name -> Dataset
        Analyses with ``u`` and ``v`` on ``(time, y, x)``.
    truth : Dataset, optional
        With ``u_true``/``v_true`` (or ``u``/``v``), plotted first.
    time : int or time label
        Frame index, or a label selected with ``method="nearest"``.
    arrows : int
        Arrows per side.
    streamlines : bool
        Streamlines instead of arrows.
    """
    if isinstance(analyses, xr.Dataset):
        analyses = {analyses.attrs.get("method", "analysis"): analyses}
    panels = []
    if truth is not None:
        tu = truth["u_true"] if "u_true" in truth else truth["u"]
        tv = truth["v_true"] if "v_true" in truth else truth["v"]
        panels.append(("truth", _frame(tu, time), _frame(tv, time)))
    for name, an in analyses.items():
        panels.append((name, _frame(an["u"], time), _frame(an["v"], time)))
    vmax = max(float(np.nanmax(np.hypot(u.values, v.values))) for _, u, v in panels) or 1.0
    fig = _figure(3.4 * len(panels) + 0.8, 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    im = None
    for ax, (name, u, v) in zip(axes, panels):
        im = _velocity_panel(ax, u, v, vmax, name, arrows, streamlines)
    units = panels[-1][1].attrs.get("units", "")
    fig.colorbar(im, ax=list(axes), label=f"speed [{units}]", shrink=0.9)
    t = panels[0][1]["time"].values if "time" in panels[0][1].coords else time
    fig.suptitle(f"velocity at {np.datetime_as_string(t, unit='m') if np.issubdtype(np.asarray(t).dtype, np.datetime64) else t}",
                 fontsize=11)
    return _save(fig, path)


def plot_errors(
    analyses: xr.Dataset | dict[str, xr.Dataset],
    truth: xr.Dataset,
    time: Any = 0,
    path: str | os.PathLike | None = None,
):
    """Endpoint-error maps ``|w − w_true|`` of each analysis at one frame (same colour scale)."""
    if isinstance(analyses, xr.Dataset):
        analyses = {analyses.attrs.get("method", "analysis"): analyses}
    tu, tv = _frame(truth["u_true"], time), _frame(truth["v_true"], time)
    errs = {n: np.hypot(_frame(a["u"], time) - tu, _frame(a["v"], time) - tv).transpose("y", "x") for n, a in analyses.items()}
    vmax = max(float(np.nanpercentile(e.values, 99)) for e in errs.values()) or 1.0
    fig = _figure(3.4 * len(errs) + 0.8, 3.4)
    axes = fig.subplots(1, len(errs), squeeze=False)[0]
    im = None
    for ax, (name, e) in zip(axes, errs.items()):
        x, xlabel = _axis(e, "x")
        y, ylabel = _axis(e, "y")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        im = ax.pcolormesh(x, y, e.values, shading="auto", vmin=0, vmax=vmax, cmap="magma")
        ax.set_title(f"{name}: mean {float(np.nanmean(e.values)):.3g}", fontsize=10)
        ax.set_aspect("equal")
    units = tu.attrs.get("units", "")
    fig.colorbar(im, ax=list(axes), label=f"endpoint error [{units}]", shrink=0.9)
    return _save(fig, path)


def plot_history(history, path: str | os.PathLike | None = None):
    """Training curve: training loss and validation observation misfit per epoch.

    ``history`` is a :class:`~xda_hybrid.front.fitted.Fitted` or its ``.history`` Dataset.
    """
    if not isinstance(history, xr.Dataset):
        history = history.history
    fig = _figure(5.0, 3.4)
    ax = fig.subplots()
    ep = history["epoch"].values
    few = len(ep) <= 40
    ax.plot(ep, history["train_cost"].values, "o-" if few else "-", label="training loss per window")
    if np.isfinite(history["val_obs_cost"].values).any():
        ax.plot(ep, history["val_obs_cost"].values, "s-" if few else "-", label="validation obs. misfit per window")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cost")
    vals = np.concatenate([history["train_cost"].values, history["val_obs_cost"].values])
    if np.all(vals[np.isfinite(vals)] > 0):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"training ({history.attrs.get('method', '')})", fontsize=10)
    return _save(fig, path)
