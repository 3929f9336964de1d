"""The ``ds.da4d`` Dataset accessor: ``fit`` a learned inversion, ``assimilate`` windows.

Registered when :mod:`xda_hybrid` is imported.  See DESIGN.md for the dataset
conventions (``<state>_obs`` with NaN = missing and ``attrs["noise_std"]``,
a uniform ``time`` axis, the model's spatial dims) and for the analysis
Dataset returned by :meth:`DA4DAccessor.assimilate`.
"""
from __future__ import annotations

import json
import math
import time as _time
import warnings
from typing import Any, Sequence

import numpy as np
import torch
import xarray as xr

from ..models.base import DynamicalModel
from . import _engine, _members
from ._problem import Problem, build_problem, check_range, check_window
from .fitted import Fitted

__all__ = ["DA4DAccessor"]

_METHODS = ("learned", "4dvar", "hybrid")
_FIT_METHODS = ("learned", "over4dvar", "generative")


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "float64": torch.float64}
    if dtype not in table:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return table[dtype]


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _json_attr(d: dict) -> str:
    return json.dumps({k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in d.items()},
                      sort_keys=True)


@xr.register_dataset_accessor("da4d")
class DA4DAccessor:
    """4DVAR-based data assimilation on a Dataset of observations (``ds.da4d``).

    Methods
    -------
    assimilate
        Analysis of every time window: classical 4DVAR, one pass of a learned
        inversion network, or the hybrid of both.
    fit
        Train an inversion network from the observations alone (no truth).
    problem
        The checked problem description (model, observed variables, axes).
    windows
        The observation windows as a torch ``Dataset`` (xbatcher-backed).
    """

    def __init__(self, ds: xr.Dataset):
        if not isinstance(ds, xr.Dataset):  # pragma: no cover - xarray only registers on Datasets
            raise ValueError("da4d works on xarray.Dataset objects")
        self._ds = ds

    # ------------------------------------------------------------------ helpers
    def problem(self, model: str | DynamicalModel | None = None, model_params: dict | None = None) -> Problem:
        """Check the dataset against ``model`` and return the problem description.

        Raises ``ValueError``/``KeyError``/``TypeError`` with a clear message when
        the dataset does not fit (missing dims or variables, irregular time,
        ±inf, no observation, no or non-positive noise std, ...).
        """
        return build_problem(self._ds, model, model_params)

    def windows(self, window: int, stride: int = 1, model: str | DynamicalModel | None = None,
                model_params: dict | None = None, cover_end: bool = False):
        """Observation windows as a :class:`~xda_hybrid.data.windows.TimeWindows` (a torch ``Dataset``).

        Wrap it with :func:`xda_hybrid.data.windows.window_loader` for a ``DataLoader``.
        """
        prob = self.problem(model, model_params)
        return prob.windows(check_window(window, prob.n_time), _positive_int("stride", stride), cover_end=cover_end)

    def _problem_for_fitted(self, fitted: Fitted) -> Problem:
        if fitted.model_name is None:
            prob = build_problem(self._ds, fitted.model)
        else:
            params = {k: v for k, v in fitted.model_params.items() if k not in fitted.geometry}
            prob = build_problem(self._ds, fitted.model_name, params)
            prob.model.load_state_dict(fitted.model.state_dict())
            for k, v in fitted.geometry.items():
                got = prob.geometry.get(k)
                if got is not None and not math.isclose(got, v, rel_tol=1e-6):
                    warnings.warn(f"the dataset's {k} = {got:.6g} differs from the one the network was fitted with "
                                  f"({v:.6g}): the analysis may be poor", RuntimeWarning, stacklevel=3)
        if prob.obs_vars != fitted.obs_vars:
            raise ValueError(f"the fitted network reads {fitted.obs_vars} but the dataset observes {prob.obs_vars}")
        return prob

    # ------------------------------------------------------------------ assimilate
    def assimilate(
        self,
        fitted: Fitted | None = None,
        method: str | None = None,
        model: str | DynamicalModel | None = None,
        model_params: dict | None = None,
        window: int | None = None,
        iterations: int | None = None,
        cycle: int | None = None,
        progress: bool = False,
        batch_size: int = 32,
        smoothness: float | None = None,
        divergence: float | None = None,
        dtype: str = "float32",
        device: str | torch.device | None = None,
        parallel: str | None = None,
        samples: int | None = None,
        seed: int = 0,
    ) -> xr.Dataset:
        """Analysis of the whole time series, window by window.

        Parameters
        ----------
        fitted : Fitted, optional
            A network from :meth:`fit` (fixes the model, the window and the observed variables).
        method : {"learned", "4dvar", "hybrid"}
            ``"learned"``: one network pass per window (default with ``fitted``);
            ``"4dvar"``: L-BFGS on the 4DVAR cost from a first guess built from
            the observations (default without ``fitted``); ``"hybrid"``: the
            network's output refined by ``iterations`` L-BFGS iterations.
        model : str or DynamicalModel, optional
            ``"lorenz96"``, ``"advection"``, ``"image"``, ``"shallow_water"`` or an
            instance; default ``ds.attrs["model"]``.
        model_params : dict, optional
            Model options (win over ``ds.attrs`` and the coordinates' ``dt``/``dx``/``dy``).
        window : int
            Frames per window (default: the fitted one, else 10).
        iterations : int, optional
            L-BFGS iterations per window (default 100 for 4dvar, 10 for hybrid).
        cycle : int, optional
            Frames between window starts (default ``window``: back-to-back
            windows).  A last window ending on the last frame is added if needed;
            frames covered by several windows take the mean of their analyses.
        progress : bool
            Show a progress bar over the window batches.
        batch_size : int
            Windows processed together; the input is read one batch at a time
            (a dask-backed Dataset is never loaded whole).
        smoothness, divergence : float, optional
            Relative weights of ½‖∇w₀‖² and ½‖∇·w₀‖² on the initial velocity
            (velocity models only; default smoothness 5 for ``image``/``advection``,
            else 0).  Unit-free: scaled by ``(dt/dx)²`` and by the observations'
            gradient signal-to-noise ``mean(Δy²/σ²)``, so one value suits any
            coordinates, tracer units and noise level.
        dtype : {"float32", "float64"}
        device : str or torch.device, optional
            Where the model and network run (default CPU, or the network's device).
        parallel : {None, "dask"}
            ``"dask"``: return a lazy, dask-backed analysis whose time blocks
            (the input's time chunks, rounded to multiples of ``cycle``) are
            analysed in parallel by the active dask scheduler, e.g. a
            ``dask.distributed`` cluster, when computed or written
            (``to_zarr``/``to_netcdf`` stream it).  Same values as the default
            in-memory path; the result-dependent attributes (``final_cost``,
            ``n_windows``, ...) are NaN/-1 placeholders (see
            :mod:`xda_hybrid.front._parallel`).
        samples : int, optional
            Posterior samples per window (randomised maximum likelihood): member
            ``k`` is the analysis of the observations perturbed by their noise,
            ``Y + ε_k`` (velocity models: the smoothness prior's mean shifted by
            a draw of that prior too).  With a ``generative`` fit and
            ``method="learned"`` a member is one network pass; with
            ``method="4dvar"`` one 4DVAR per member (the EDA); ``"hybrid"``
            refines each member's pass by 4DVAR on its perturbed cost.  The
            variables gain a leading ``member`` dimension; see
            :func:`xda_hybrid.ensemble_mean` / :func:`xda_hybrid.ensemble_spread`.
        seed : int
            Seed of the perturbations (with ``samples``).

        Returns
        -------
        xarray.Dataset
            One variable per state component on the input's ``time`` and spatial
            coordinates (NaN where no window with observations covers a frame),
            CF attributes and ``attrs`` ``method``, ``window``, ``cycle``,
            ``iterations``, ``final_cost``, ``wall_time``, ...
        """
        t_start = _time.perf_counter()
        if method is None:
            method = "learned" if fitted is not None else "4dvar"
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if fitted is not None and not isinstance(fitted, Fitted):
            raise TypeError(f"fitted must be a Fitted object (from ds.da4d.fit or xh.load), got {type(fitted).__name__}")
        if method in ("learned", "hybrid") and fitted is None:
            raise ValueError(f"method={method!r} needs a fitted network: ds.da4d.assimilate(fitted, ...)")
        torch_dtype = _dtype(dtype)
        if fitted is not None:
            if model is not None or model_params:
                raise ValueError("the fitted object fixes the model: do not pass model= or model_params= with it")
            prob = self._problem_for_fitted(fitted)
            if window is not None and int(window) != fitted.window:
                raise ValueError(f"the network was fitted on windows of {fitted.window} frames, not {window}")
            window = fitted.window
            net = fitted.network
            if device is None:
                device = next(net.parameters()).device
            net = net.to(device=device, dtype=torch_dtype).eval()
            weights = fitted.weights if smoothness is None and divergence is None else None
        else:
            prob = self.problem(model, model_params)
            net, weights = None, None
        check_range(prob, torch_dtype)
        window = check_window(10 if window is None else window, prob.n_time)
        cycle = window if cycle is None else _positive_int("cycle", cycle)
        batch_size = _positive_int("batch_size", batch_size)
        if iterations is None:
            iterations = _engine.DEFAULT_ITERATIONS[method]
        iterations = _positive_int("iterations", iterations, minimum=0)
        n_mem = 1 if samples is None else _positive_int("samples", samples)
        gen = torch.Generator().manual_seed(int(seed))
        if samples is not None and parallel is not None:
            raise ValueError("samples= is not available with parallel='dask'")
        if samples is not None and method == "learned" and fitted.method != "generative":
            warnings.warn(f"samples from a {fitted.method!r} fit: its network was not trained on perturbed data and "
                          "its spread is not calibrated (fit with method='generative')", RuntimeWarning, stacklevel=2)
        if weights is None:
            gw, dw = _engine.regularisation_weights(prob, smoothness, divergence)
        else:
            gw, dw = weights["grad_weight"], weights["div_weight"]
        model_obj = prob.model.to(device=device)
        cost = _engine.make_cost(prob, window, gw, dw).to(device)

        if parallel is not None:
            if parallel != "dask":
                raise ValueError(f"parallel must be None or 'dask', got {parallel!r}")
            from ._parallel import lazy_dataset

            return lazy_dataset(self._ds, prob, fitted, method, cost, net, window, cycle, iterations, gw, dw,
                                torch_dtype, device, batch_size, t_start)
        wins = prob.windows(window, cycle, cover_end=True)
        nt, shape = prob.n_time, prob.shape
        n_ch = model_obj.n_channels
        acc = np.zeros((nt, n_mem, n_ch, *shape), dtype=np.float32)  # the output stays in memory
        cnt = np.zeros(nt, dtype=np.int64)
        total_cost, n_done, n_empty, iters = 0.0, 0, 0, []
        chunks = [list(range(i, min(i + batch_size, len(wins)))) for i in range(0, len(wins), batch_size)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(wins), desc=f"assimilate ({method})", unit="window")
        for idx in chunks:
            batch = wins.batch(idx)
            obs = _engine.observations(batch, torch_dtype, device)
            keep = _engine.nonempty(obs)
            n_empty += int((~keep).sum())
            if keep.any():
                sel = keep.nonzero().flatten()
                if samples is not None or (net is not None and net.config["background"]):
                    res = _members.analyse_members(method, cost, obs[sel], net, iterations, samples, gen)
                else:
                    res = _engine.analyse(method, cost, obs[sel], net, iterations)
                traj = res["trajectory"].detach().to("cpu", torch.float64).numpy()
                traj = np.swapaxes(traj.reshape(n_mem, len(sel), *traj.shape[1:]), 0, 2)  # (T, B, K, ...)
                starts = batch["start"][sel.cpu()].tolist()
                for j, s in enumerate(starts):
                    acc[s : s + window] += traj[:, j]
                    cnt[s : s + window] += 1
                total_cost += float(res["cost"].sum())
                iters.extend(res["n_iter"].tolist())
                n_done += len(starts)
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        if n_done == 0:
            raise ValueError("no window holds any observation: nothing to assimilate")
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (acc / cnt.reshape(-1, *([1] * (acc.ndim - 1)))).astype(np.float32)
        bad = ~np.isfinite(out[cnt > 0]).reshape(int((cnt > 0).sum()), -1).all(1)
        if bad.any():  # never NaN output without a warning
            warnings.warn(f"the {method} analysis is not finite in {int(bad.sum())} of {int((cnt > 0).sum())} frames "
                          "covered by windows with observations (diverged network or model)", RuntimeWarning,
                          stacklevel=2)

        tmpl = prob.template()
        dims = ("time", *prob.spatial_dims)
        coords = {k: v for k, v in tmpl.coords.items()}
        if samples is not None:  # (time, member, ...) -> (member, time, ...)
            dims = ("member", *dims)
            coords.update(_members.member_coords(n_mem))
        data_vars = {s: (dims, out[:, 0, c] if samples is None else np.moveaxis(out[:, :, c], 1, 0),
                         prob.state_attrs(s)) for c, s in enumerate(model_obj.state_names)}
        attrs = dict(self._ds.attrs)
        attrs.update({
            "title": f"xda-hybrid analysis ({method})",
            "method": method,
            "model": prob.model_name or type(model_obj).__name__,
            "model_params": _json_attr(prob.model_params if fitted is None else fitted.model_params),
            "window": int(window),
            "cycle": int(cycle),
            "iterations": int(iterations),
            "mean_iterations": float(np.mean(iters)) if iters else 0.0,
            "final_cost": float(total_cost),
            "final_cost_per_window": float(total_cost / n_done),
            "n_windows": int(n_done),
            "n_windows_without_obs": int(n_empty),
            "grad_weight": float(gw),
            "div_weight": float(dw),
            "observed": ",".join(prob.obs_vars),
            "wall_time": float(_time.perf_counter() - t_start),
        })
        if samples is not None:
            attrs.update({"samples": int(n_mem), "seed": int(seed),
                          "ensemble": "randomised maximum likelihood: members from perturbed observations"})
        if fitted is not None:
            attrs["fitted_method"] = fitted.method
            attrs["fitted_epochs"] = len(fitted._history)
        return xr.Dataset(data_vars, coords=coords, attrs=attrs)

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        model: str | DynamicalModel | None = None,
        window: int = 10,
        stride: int = 1,
        epochs: int = 20,
        batch_size: int = 32,
        method: str = "learned",
        learn: Sequence[str] | str | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        validation: float | xr.Dataset | None = 0.1,
        seed: int = 0,
        model_params: dict | None = None,
        lr: float = 1e-3,
        dynamics_lr: float | None = None,
        network: dict | None = None,
        smoothness: float | None = None,
        divergence: float | None = None,
        iterations: int = 50,
        output_scale: dict[str, float] | None = None,
        patience: int | None = None,
        checkpoint: str | None = None,
        dtype: str = "float32",
    ) -> Fitted:
        """Train an inversion network on the observation windows of the dataset (no truth read).

        Parameters
        ----------
        model, model_params
            As in :meth:`assimilate`.
        window : int
            Frames per window.
        stride : int
            Frames between training windows (1: every possible window).
        epochs, batch_size, lr : training options.
        method : {"learned", "over4dvar", "generative"}
            ``"learned"``: minimise the 4DVAR cost of the network's analyses
            (the method of DESIGN.md); ``"over4dvar"``: fit the network to
            classical 4DVAR analyses of the training windows (``iterations``
            L-BFGS iterations each); ``"generative"``: minimise the randomised
            4DVAR cost ``J(F(Y + ε); Y + ε)`` with new observation perturbations
            ``ε ~ N(0, R)`` at every batch, so that passes on perturbed
            observations are posterior samples (``assimilate(fitted, samples=K)``;
            see :mod:`xda_hybrid.learning.generative` for the assumptions).
        learn : list of str, optional
            Physical parameters of the model trained jointly (e.g. ``["forcing"]``), method ``"learned"`` only.
        device : str or torch.device, optional
            Training device (default CPU).
        progress : bool
            Show a progress bar.
        validation : float or Dataset or None
            Fraction of the windows (the last ones in time) held out, or a
            separate Dataset of observations; scored by the observation misfit.
        seed : int
            Seeds the network's initialisation and the batch order.
        network : dict, optional
            Backbone options (``width``, ``depth``, ``kernel_size`` for 1D;
            ``width``, ``levels``, ``padding`` for 2D).  For tracer models
            (state ``u, v, tracer`` with only the tracer observed),
            ``velocity="direct"`` or ``"stream"`` selects the motion U-Net
            (:class:`~xda_hybrid.motion.learned.MotionInversionNetwork`: first
            frame plus a correction; ``"stream"``: the velocity is the curl of a
            predicted stream function, divergence-free); a ``generative`` fit
            uses it by default, its velocity starting at the smoothness-prior
            draw (``residual``, default on) so that members spread where no
            observation constrains the flow.
        smoothness, divergence : float, optional
            Velocity regularisation weights (see :meth:`assimilate`).
        output_scale : dict, optional
            Typical amplitude of never-observed state channels, e.g. ``{"u": 0.3, "v": 0.3}``
            (model units; default: a third of a cell per frame for velocities).
        patience : int, optional
            Early stopping on the validation score.
        checkpoint : path, optional
            Training checkpoint file (resumed if present).
        dtype : {"float32", "float64"}

        Returns
        -------
        Fitted
        """
        from ..data.windows import window_loader
        from ..learning import InversionNetwork, TrainingData, over4dvar, train
        from ..observation import Observations

        t_start = _time.perf_counter()
        if method not in _FIT_METHODS:
            raise ValueError(f"method must be one of {_FIT_METHODS}, got {method!r}")
        epochs = _positive_int("epochs", epochs)
        batch_size = _positive_int("batch_size", batch_size)
        stride = _positive_int("stride", stride)
        torch_dtype = _dtype(dtype)
        prob = self.problem(model, model_params)
        check_range(prob, torch_dtype)
        window = check_window(window, prob.n_time)
        if isinstance(learn, str):
            learn = [learn]
        learn = list(learn or [])
        if learn and method != "learned":
            raise ValueError("learn=[...] (joint model parameters) needs method='learned'")

        def collect(p: Problem) -> Observations:
            wins = p.windows(window, stride)
            vals, ivs = [], []
            for b in window_loader(wins, batch_size=256):
                vals.append(b["values"])
                ivs.append(b["inv_var"])
            obs = _engine.observations({"values": torch.cat(vals), "inv_var": torch.cat(ivs)}, torch_dtype)
            return obs[_engine.nonempty(obs)]

        obs = collect(prob)
        if obs.values.shape[0] == 0:
            raise ValueError("no training window holds any observation")
        n_train = obs.values.shape[0]
        if isinstance(validation, xr.Dataset):
            vprob = build_problem(validation, prob.model_name or prob.model,
                                  None if prob.model_name is None else model_params)
            if vprob.obs_vars != prob.obs_vars:
                raise ValueError(f"validation observes {vprob.obs_vars}, the training data {prob.obs_vars}")
            vobs = collect(vprob)
            obs = Observations(torch.cat([obs.values, vobs.values]), torch.cat([obs.inv_var, vobs.inv_var]))
            val_fraction = vobs.values.shape[0] / obs.values.shape[0]
        elif validation is None:
            val_fraction = 0.0
        else:
            val_fraction = float(validation)
            if not 0 <= val_fraction < 1:
                raise ValueError(f"validation must be a fraction in [0, 1) or a Dataset, got {validation!r}")
            if n_train - int(round(val_fraction * n_train)) < 1:
                raise ValueError(f"only {n_train} windows: too few to hold out {val_fraction:.0%} for validation")

        mdl = prob.model
        if learn:
            mdl.learn(learn)
        gw, dw = _engine.regularisation_weights(prob, smoothness, divergence)
        cost = _engine.make_cost(prob, window, gw, dw)
        op = cost.obs_operator
        net_options = dict(network or {})
        velocity = net_options.pop("velocity", None)
        if method == "generative":  # extra input channels for the smoothness prior's shift, if any
            from ..learning import generative_network

            net = generative_network(mdl, window, cost, seed=int(seed), **net_options)
        else:
            net = InversionNetwork.for_model(mdl, window, op, seed=int(seed), **net_options)
        if velocity is not None or (method == "generative" and _engine.motion_state(mdl, op)):
            # the motion U-Net: first frame + correction (a generic network does not learn to pass the prior shift
            # through under clouds); velocity="stream": divergence-free velocity from a stream function
            from ..motion.learned import MotionInversionNetwork

            if velocity not in (None, "direct", "stream"):
                raise ValueError(f"network velocity must be 'direct' or 'stream', got {velocity!r}")
            if not _engine.motion_state(mdl, op):
                raise ValueError(f"network velocity={velocity!r} needs a 2D model whose state is (u, v, <tracer>) with "
                                 f"only the last variable observed; got {tuple(mdl.state_names)} observing "
                                 f"{list(prob.obs_vars)}")
            net = MotionInversionNetwork.for_motion(net.config, mdl, velocity or "direct")
        n_fit = obs.values.shape[0] - int(round(val_fraction * obs.values.shape[0]))
        net.fit_normalisation(obs[:n_fit])
        scale = net.out_scale.clone()
        mean = net.out_mean.clone()
        observed = set(op.channels)
        vs = _engine.velocity_scale(prob, obs[:n_fit])
        for c, s in enumerate(mdl.state_names):
            if c not in observed:
                scale[c] = vs if s in mdl.velocity_names else 1.0
                mean[c] = 0.0
        for s, v in (output_scale or {}).items():
            scale[mdl.channel(s)] = float(v)
        scale[0] = scale[0] * getattr(net, "stream_factor", 1.0)  # a stream-function head outputs ψ, not u
        net.set_output_scale(scale, mean)
        net.to(torch_dtype)
        data = TrainingData(obs)
        options = dict(epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction, patience=patience,
                       seed=int(seed), device=device, progress=progress, checkpoint=checkpoint,
                       resume=checkpoint is not None)
        try:
            if method == "learned":
                result = train(net, cost, data, dynamics_lr=dynamics_lr, **options)
            elif method == "generative":
                from ..learning import train_generative

                result = train_generative(net, cost, data, **options)
            else:
                x_init = _engine.first_guess(obs, mdl.n_channels, list(op.channels))
                result = over4dvar(net, cost, data, max_iter=_positive_int("iterations", iterations),
                                   x_init=x_init, **options).fit
        except RuntimeError as e:  # shape mismatches surface as torch RuntimeErrors
            if "size" in str(e) or "shape" in str(e):
                raise ValueError(f"the data's grid {dict(zip(prob.spatial_dims, prob.shape))} does not fit the "
                                 f"network: {e}") from None
            raise
        net = result.net.eval()
        info = {
            "epochs": epochs, "stride": stride, "batch_size": batch_size, "lr": lr, "seed": int(seed),
            "n_windows": int(obs.values.shape[0]), "val_fraction": val_fraction, "best_epoch": int(result.best_epoch),
            "stopped_early": bool(result.stopped_early), "wall_time": _time.perf_counter() - t_start,
            "dtype": dtype,
        }
        return Fitted(
            net, mdl, model_name=prob.model_name, model_params=prob.model_params, geometry=prob.geometry,
            window=window, obs_vars=prob.obs_vars, spatial_dims=prob.spatial_dims, method=method,
            weights={"grad_weight": gw, "div_weight": dw}, learned=learn, history=result.history, info=info,
        )
