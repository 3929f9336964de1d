"""From a Dataset to an assimilation problem: model, observed variables, noise, axes, units.

Everything the accessor needs to know about the input is checked here, with
``ValueError`` / ``KeyError`` / ``TypeError`` messages that name the variable
or dimension at fault.  Truth variables (``*_true``) are never read.
"""
from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..models import available_models, get_model
from ..models.base import CFLError, DynamicalModel

#: models whose parameters are physical constants in SI units (need metres and seconds)
SI_MODELS = ("ShallowWater",)

LENGTH_UNITS = {
    "m": 1.0, "metre": 1.0, "metres": 1.0, "meter": 1.0, "meters": 1.0,
    "km": 1e3, "kilometre": 1e3, "kilometres": 1e3, "kilometer": 1e3, "kilometers": 1e3,
}
TIME_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}
DIMENSIONLESS = ("", "1", "none", "index", "cell", "cells", "frame", "frames")


@dataclass
class Axis:
    """A uniform axis: ``step`` in ``units`` (seconds for datetimes); ``si`` factor to SI or None."""

    name: str
    size: int
    step: float
    units: str
    si: float | None
    has_coord: bool


def _py(v: Any) -> Any:
    """numpy scalar -> Python scalar (netCDF attributes come back as numpy types)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    return v


def _time_values(coord: xr.DataArray) -> tuple[np.ndarray, str]:
    """Time coordinate as float values and their units (seconds for datetimes)."""
    t = coord.values
    if np.issubdtype(t.dtype, np.datetime64) or np.issubdtype(t.dtype, np.timedelta64):
        return (t - t[0]) / np.timedelta64(1, "s"), "s"
    if t.dtype == object:  # cftime dates
        try:
            return np.array([(ti - t[0]).total_seconds() for ti in t], dtype=np.float64), "s"
        except Exception:  # noqa: BLE001
            raise TypeError(f"time coordinate of dtype object ({type(t[0]).__name__}) is not understood") from None
    if not np.issubdtype(t.dtype, np.number) or np.issubdtype(t.dtype, np.complexfloating):
        raise TypeError(f"time coordinate must be numeric or datetime, got dtype {t.dtype}")
    return t.astype(np.float64), str(coord.attrs.get("units", "1")).strip()


def _unit_factor(units: str, table: dict[str, float]) -> float | None:
    u = units.strip().lower()
    if u in table:
        return table[u]
    head = u.split(" since ")[0].strip()  # undecoded CF time "hours since ..."
    return table.get(head)


def time_axis(ds: xr.Dataset, n_time: int) -> Axis:
    """The ``time`` axis: checked strictly increasing and uniform; index spacing 1 without a coordinate."""
    if "time" not in ds.coords:
        return Axis("time", n_time, 1.0, "1", None, False)
    vals, units = _time_values(ds["time"])
    if not np.all(np.isfinite(vals)):
        raise ValueError("the time coordinate holds NaN/NaT or infinite values")
    step = 1.0
    if n_time >= 2:
        d = np.diff(vals)
        if not np.all(d > 0):
            raise ValueError("time must be strictly increasing (sort it with ds.sortby('time') and drop duplicates)")
        step = (vals[-1] - vals[0]) / (n_time - 1)
        tol = 1e-6 * step + (2e-9 if units == "s" else 0.0)
        if np.max(np.abs(d - step)) > tol:
            raise ValueError(
                f"time is not uniform (steps from {d.min():.6g} to {d.max():.6g} {units}): "
                "resample or interpolate to a regular time axis first"
            )
    return Axis("time", n_time, float(step), units, _unit_factor(units, TIME_UNITS), True)


def space_axis(ds: xr.Dataset, dim: str, n: int, uniform: bool) -> Axis:
    """A spatial axis; with ``uniform`` its coordinate must be strictly increasing and evenly spaced."""
    if dim not in ds.coords:
        return Axis(dim, n, 1.0, "1", None, False)
    c = ds[dim]
    units = str(c.attrs.get("units", "1")).strip()
    if not uniform:
        return Axis(dim, n, 1.0, units, _unit_factor(units, LENGTH_UNITS), True)
    v = c.values
    if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.complexfloating):
        raise TypeError(f"coordinate {dim!r} must be numeric, got dtype {v.dtype}")
    v = v.astype(np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"coordinate {dim!r} holds NaN or infinite values")
    step = 1.0
    if n >= 2:
        d = np.diff(v)
        if not np.all(d > 0):
            raise ValueError(f"coordinate {dim!r} must be strictly increasing (use ds.sortby({dim!r}))")
        step = (v[-1] - v[0]) / (n - 1)
        if np.max(np.abs(d - step)) > 1e-6 * step:
            raise ValueError(f"coordinate {dim!r} is not evenly spaced: the models need a regular grid")
    return Axis(dim, n, float(step), units, _unit_factor(units, LENGTH_UNITS), True)


def registered_name(model: DynamicalModel) -> str | None:
    """Registry name of a model instance's class, if any."""
    for name in available_models():
        try:
            if type(get_model(name)) is type(model):
                return name
        except Exception:  # noqa: BLE001 - a model that cannot be built with defaults
            continue
    return None


def _model_class(name: str) -> type:
    if not isinstance(name, str):
        raise TypeError(f"model must be a registered name or a DynamicalModel instance, got {type(name).__name__}")
    if name not in available_models():
        raise ValueError(f"unknown model {name!r}; expected one of {available_models()} or a DynamicalModel")
    return type(get_model(name))


@dataclass
class Problem:
    """A checked assimilation problem on a Dataset (see :func:`build_problem`)."""

    ds: xr.Dataset
    model: DynamicalModel
    model_name: str | None
    model_params: dict[str, Any]
    obs_vars: list[str]
    obs_states: list[str]
    noise: list[float | str]
    spatial_dims: tuple[str, ...]
    time: Axis
    space: dict[str, Axis]
    geometry: dict[str, float] = field(default_factory=dict)

    @property
    def n_time(self) -> int:
        return self.time.size

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.space[d].size for d in self.spatial_dims)

    def template(self) -> xr.DataArray:
        """First observation variable in ``(time, *spatial)`` order (for coordinates only)."""
        return self.ds[self.obs_vars[0]].transpose("time", *self.spatial_dims)

    def windows(self, window: int, stride: int, cover_end: bool = False, dtype=np.float32):
        from ..data.windows import TimeWindows

        check_window(window, self.n_time)
        return TimeWindows(self.ds, self.obs_vars, window, stride, self.spatial_dims, self.noise,
                           cover_end=cover_end, dtype=dtype)

    def gradient_snr(self) -> float:
        """Mean squared neighbour difference of the observations over their error variance.

        ``mean(Δy² / σ²)`` over the horizontal neighbour pairs observed at both
        ends (all observed variables, both directions) — the signal-to-noise of
        the observed gradients per cell, used to make the velocity
        regularisation weights independent of the data's units and noise level.
        Computed once, lazily for dask-backed data.
        """
        if getattr(self, "_gsnr", None) is not None:
            return self._gsnr
        total, count = 0.0, 0
        for var, std in zip(self.obs_vars, self.noise):
            y = self.ds[var]
            var_inv = (1.0 / self.ds[std] ** 2) if isinstance(std, str) else 1.0 / float(std) ** 2
            for d in self.spatial_dims:
                if self.ds.sizes[d] < 2:
                    continue
                g = (y.diff(d) ** 2) * (var_inv if not isinstance(var_inv, xr.DataArray) else var_inv.isel({d: slice(1, None)}))
                g = g.where(np.isfinite(g))
                total += float(g.sum())
                count += int(g.notnull().sum())
        self._gsnr = total / count if count else 1.0
        return self._gsnr

    def obs_operator(self):
        from ..observation import ObservationOperator

        return ObservationOperator(self.model, channels=self.obs_states)

    def velocity_units(self, state: str) -> str:
        """Units of a velocity channel: coordinate units per time unit (SI for SI models)."""
        dim = "x" if state == self.model.velocity_names[0] else "y"
        ax = self.space.get(dim, Axis(dim, 0, 1.0, "1", None, False))
        if self.si:
            return "m s-1"
        lu = ax.units if ax.units.lower() not in DIMENSIONLESS else "1"
        tu = self.time.units.split(" since ")[0].strip() if self.time.units.lower() not in DIMENSIONLESS else "1"
        if lu == "1" and tu == "1":
            return "1"
        return f"{lu} {tu}-1"

    @property
    def si(self) -> bool:
        return type(self.model).__name__ in SI_MODELS

    def state_attrs(self, state: str) -> dict[str, Any]:
        """CF attributes of the analysis variable of ``state``."""
        attrs: dict[str, Any] = {}
        if state in self.model.velocity_names:
            comp = "eastward" if state == self.model.velocity_names[0] else "northward"
            attrs["long_name"] = f"{comp} velocity (analysis)"
            attrs["units"] = self.velocity_units(state)
            if attrs["units"] == "1":
                attrs["comment"] = "grid cells per frame (the coordinates are plain indices)"
        else:
            src = f"{state}_obs"
            base = self.ds[src].attrs if src in self.ds else {}
            name = base.get("long_name", state)
            name = name.replace("observed ", "")
            attrs["long_name"] = f"{name} (analysis)"
            if "units" in base:
                attrs["units"] = base["units"]
            if "standard_name" in base:
                attrs["standard_name"] = base["standard_name"]
        return attrs


def check_range(problem: "Problem", dtype) -> None:
    """Refuse observations whose normalised misfits over- or underflow float32 (the windows' dtype).

    The cost sums ``(y/σ)²``-sized terms and the masks come from ``1/σ²``: a
    noise std so small or so large, or values so large, that these leave the
    floating-point range would give an infinite cost or silently drop every
    observation.  Raises ``ValueError`` naming the variable.
    """
    import torch

    # the observation windows are read in float32 whatever the compute dtype (see Problem.windows)
    fi = torch.finfo(torch.float32 if dtype in (torch.float32, torch.float64) else dtype)
    name = "float32"
    hint = ""
    limit = float(fi.max) * 1e-6  # room for the sums over a window
    tiny = float(fi.tiny) * 1e6
    for var, std in zip(problem.obs_vars, problem.noise):
        da = problem.ds[var]
        amax = float(abs(da).max(skipna=True))
        if isinstance(std, str):
            sd = problem.ds[std].where(da.notnull())
            lo, hi = float(sd.min(skipna=True)), float(sd.max(skipna=True))
            what = f"{std!r} (from {lo:.3g} to {hi:.3g})"
        else:
            lo = hi = float(std)
            what = f"{var}.attrs['noise_std'] = {lo:.3g}"
        if not math.isfinite(amax):
            continue  # all NaN: reported by the value checks
        inv_hi, inv_lo = 1.0 / lo**2, 1.0 / hi**2
        z2 = (amax / lo) ** 2
        if inv_hi > limit or z2 > limit or amax**2 > limit:
            raise ValueError(
                f"{var!r}: values up to {amax:.3g} with noise std {what} give squared normalised misfits "
                f"beyond the {name} range (about {fi.max:.3g}): rescale {var!r} and its noise std{hint}"
            )
        if inv_lo < tiny:
            raise ValueError(
                f"{var!r}: noise std {what} is so large that 1/std² underflows "
                f"{name}: every observation would be ignored; rescale {var!r} and its noise std"
            )


def check_window(window: Any, n_time: int) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
        raise TypeError(f"window must be an integer number of frames, got {window!r}")
    window = int(window)
    if window < 1:
        raise ValueError(f"window must be >= 1 frame, got {window}")
    if window > n_time:
        raise ValueError(f"window of {window} frames is longer than the data ({n_time} time steps)")
    return window


def _attr_number(attrs: dict, key: str) -> float:
    v = _py(attrs[key])
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"ds.attrs[{key!r}] must be a real number, got {v!r}")
    if not (math.isfinite(float(v)) and float(v) > 0):
        raise ValueError(f"ds.attrs[{key!r}] must be finite and > 0, got {v!r}")
    return float(v)


def _geometry(cls: type, time: Axis, space: dict[str, Axis], si: bool, attrs: dict) -> dict[str, float]:
    """dt, dx, dy for the model's constructor, from the coordinates (attributes as fallback)."""
    sig = inspect.signature(cls.__init__).parameters
    out: dict[str, float] = {}
    if "dt" in sig:
        if time.has_coord and time.size >= 2:
            if si:
                if time.si is None:
                    raise ValueError(
                        f"{cls.__name__} needs time in seconds: give the time coordinate datetime values or "
                        f"units such as 's' or 'hours' (got units {time.units!r})"
                    )
                out["dt"] = time.step * time.si
            else:
                out["dt"] = time.step
        elif "dt" in attrs:
            out["dt"] = _attr_number(attrs, "dt")
    for key, dim in (("dx", "x"), ("dy", "y")):
        if key in sig and dim in space:
            ax = space[dim]
            if ax.has_coord and ax.size >= 2:
                if si:
                    if ax.si is None:
                        raise ValueError(
                            f"{cls.__name__} needs {dim!r} in metres: set ds[{dim!r}].attrs['units'] to 'm' or 'km' "
                            f"(got {ax.units!r})"
                        )
                    out[key] = ax.step * ax.si
                else:
                    out[key] = ax.step
            elif key in attrs:
                out[key] = _attr_number(attrs, key)
    return out


def build_problem(
    ds: xr.Dataset,
    model: str | DynamicalModel | None = None,
    model_params: dict[str, Any] | None = None,
    check_values: bool = True,
) -> Problem:
    """Check ``ds`` against a model and collect what an assimilation needs.

    ``model`` defaults to ``ds.attrs["model"]``.  Model options are, by
    increasing priority: ``ds.attrs`` entries named like constructor arguments,
    the grid spacing and time step of the coordinates (``dt``, ``dx``, ``dy``),
    and ``model_params``.

    Raises
    ------
    ValueError, KeyError, TypeError
        With a message naming what is wrong (see module docstring).
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray.Dataset, got {type(ds).__name__}")
    model_params = dict(model_params or {})
    if model is None:
        model = ds.attrs.get("model")
        if model is None:
            raise ValueError("no model: pass model='lorenz96' (or 'image', 'advection', 'shallow_water', "
                             "or a DynamicalModel) or set ds.attrs['model']")
        model = str(_py(model))
    if isinstance(model, DynamicalModel):
        if model_params:
            raise ValueError("model_params can only be given with a model name, not a model instance")
        cls = type(model)
        name = registered_name(model)
    else:
        cls = _model_class(model)
        name = model
    state_names = tuple(cls.state_names)
    spatial_dims = tuple(cls.spatial_dims)

    # observation variables
    obs_vars, obs_states = [], []
    for var in ds.data_vars:
        var = str(var)
        if not var.endswith("_obs"):
            continue
        state = var[: -len("_obs")]
        if state not in state_names:
            raise ValueError(
                f"observation variable {var!r} matches no state of {cls.__name__} "
                f"(states {list(state_names)}); rename or drop it"
            )
        obs_vars.append(var)
    if not obs_vars:
        raise KeyError(
            f"no observation variable for {cls.__name__}: expected one of {[s + '_obs' for s in state_names]} "
            f"in the dataset (found {sorted(map(str, ds.data_vars))})"
        )
    obs_vars.sort(key=lambda v: state_names.index(v[:-4]))
    obs_states = [v[:-4] for v in obs_vars]
    want = {"time", *spatial_dims}
    for var in obs_vars:
        da = ds[var]
        dims = set(map(str, da.dims))
        missing, extra = want - dims, dims - want
        if missing:
            raise ValueError(f"{var!r} has dims {tuple(da.dims)} but {cls.__name__} needs {('time', *spatial_dims)}: "
                             f"missing {sorted(missing)}")
        if extra:
            raise ValueError(f"{var!r} has unexpected dims {sorted(extra)} (expected {('time', *spatial_dims)}); "
                             "select or stack them first")
        if da.dtype.kind not in "fiu":
            raise TypeError(f"{var!r} must hold real numbers, got dtype {da.dtype}")
    n_time = ds.sizes["time"]
    if n_time < 1:
        raise ValueError("the dataset has an empty time axis")
    for d in spatial_dims:
        if ds.sizes[d] < 1:
            raise ValueError(f"the dataset has an empty {d!r} axis")

    # noise
    noise: list[float | str] = []
    for var in obs_vars:
        std_var = f"{var}_std"
        if std_var in ds.data_vars:
            sd = ds[std_var]
            if sd.dtype.kind not in "fiu":
                raise TypeError(f"{std_var!r} must hold real numbers (observation error std), got dtype {sd.dtype}")
            if not set(map(str, sd.dims)) <= set(map(str, ds[var].dims)):
                raise ValueError(f"{std_var!r} has dims {tuple(sd.dims)} not among those of {var!r}")
            if check_values:
                bad = ((sd <= 0) | ~np.isfinite(sd)) & ds[var].notnull()
                if bool(bad.any()):
                    raise ValueError(f"{std_var!r} must be finite and > 0 wherever {var!r} is observed")
            noise.append(std_var)
        elif "noise_std" in ds[var].attrs:
            try:
                raw = _py(ds[var].attrs["noise_std"])
                if isinstance(raw, (bool, np.bool_, str, bytes)):
                    raise TypeError
                s = float(raw)
            except (TypeError, ValueError):
                raise TypeError(f"{var}.attrs['noise_std'] must be a number, got {ds[var].attrs['noise_std']!r}") from None
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"{var}.attrs['noise_std'] must be finite and > 0, got {s}")
            noise.append(s)
        else:
            raise ValueError(
                f"no observation error for {var!r}: set ds[{var!r}].attrs['noise_std'] (a std > 0) "
                f"or add a per-point variable {std_var!r}"
            )

    # values: NaN is missing (fine), inf is an error, something must be observed
    if check_values:
        any_obs = False
        for var in obs_vars:
            da = ds[var]
            if bool(np.isinf(da).any()):
                raise ValueError(f"{var!r} contains ±inf; use NaN for missing values")
            any_obs = any_obs or bool(da.notnull().any())
        if not any_obs:
            raise ValueError(f"all observations are missing (NaN) in {obs_vars}")

    # axes, model options
    time = time_axis(ds, n_time)
    uniform = len(spatial_dims) > 1
    space = {d: space_axis(ds, d, ds.sizes[d], uniform) for d in spatial_dims}
    si = cls.__name__ in SI_MODELS
    if isinstance(model, DynamicalModel):
        instance, params, geometry = model, {}, {}
    else:
        sig = inspect.signature(cls.__init__).parameters
        accepted = [p for p in sig if p != "self" and sig[p].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        unknown = set(model_params) - set(accepted)
        if unknown:
            raise TypeError(f"model_params {sorted(unknown)} are not options of {cls.__name__} (accepted: {accepted})")
        params = {}
        for p in accepted:
            if p in ds.attrs and p not in ("dt", "dx", "dy"):
                v = _py(ds.attrs[p])
                if isinstance(v, (int, float, str, bool)):
                    _check_option(sig[p], v, f"ds.attrs[{p!r}]")
                    params[p] = v
        for p, v in model_params.items():
            _check_option(sig[p], v, f"model_params[{p!r}]")
        geometry = _geometry(cls, time, space, si, ds.attrs)
        params.update(geometry)
        params.update(model_params)
        try:
            instance = get_model(name, **params)
        except CFLError:
            raise
        except (TypeError, ValueError) as e:
            raise type(e)(f"{cls.__name__} refused its options {params}: {e}") from None
    # a step on a state of the data's shape must work
    _check_shape(instance, tuple(ds.sizes[d] for d in spatial_dims))
    return Problem(
        ds=ds, model=instance, model_name=name, model_params=params, obs_vars=obs_vars, obs_states=obs_states,
        noise=noise, spatial_dims=spatial_dims, time=time, space=space, geometry=geometry,
    )


def _check_option(param: inspect.Parameter, value: Any, source: str) -> None:
    """A numeric model option (default int/float, or None for ``dt``/``dy``) must be a finite real number."""
    default = param.default
    numeric = (isinstance(default, (int, float)) and not isinstance(default, bool)) or (
        default is None and param.name in ("dt", "dx", "dy"))
    if not numeric:
        return
    if default is None and value is None:
        return
    if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):  # a field (e.g. coriolis per point)
        arr = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"model option {param.name!r} (from {source}) must hold real numbers, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"model option {param.name!r} (from {source}) holds NaN or infinite values")
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"model option {param.name!r} (from {source}) must be a real number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"model option {param.name!r} (from {source}) must be finite, got {value!r}")


_MIN_SIZE = {1: 4, 2: 3}


def _check_shape(model: DynamicalModel, shape: tuple[int, ...]) -> None:
    import torch

    nmin = _MIN_SIZE.get(len(shape), 1)
    if any(n < nmin for n in shape):
        raise ValueError(
            f"{type(model).__name__} needs at least {nmin} points along each of {list(model.spatial_dims)}, "
            f"got {dict(zip(model.spatial_dims, shape))}"
        )
    x = torch.zeros(1, model.n_channels, *shape, dtype=torch.float64)  # a state at rest
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(x, 1)
    except (RuntimeError, IndexError) as e:
        raise ValueError(f"a grid of shape {dict(zip(model.spatial_dims, shape))} does not fit "
                         f"{type(model).__name__}: {e}") from None
