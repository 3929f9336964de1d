"""Command line: ``xda-hybrid`` (or ``python -m xda_hybrid``).

Subcommands
-----------
``demo``        learned inversion vs classical 4DVAR on the ``tracer_motion`` dataset: table, analysis.nc, PNGs
``fit``         train an inversion network on a netCDF/zarr file (or a catalog entry) and save it
``assimilate``  analyse a netCDF/zarr file (4DVAR, or a saved network) and write the analysis
``datasets``    list the packaged catalog
``twin``        classical 4DVAR twin experiments of the published setups (tensor level)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main"]


# ---------------------------------------------------------------------------- helpers
def _value(text: str) -> Any:
    """``"8"`` -> 8, ``"0.5"`` -> 0.5, ``"true"`` -> True, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for typ in (int, float):
        try:
            return typ(text)
        except ValueError:
            pass
    return text


def _params(items: Sequence[str] | None) -> dict[str, Any]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"error: --param expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _value(v.strip())
    return out


def _open(source: str, chunks: int | None = None):
    """A netCDF file, a zarr store, or a catalog entry name (``name`` or ``name:k=v,k=v``)."""
    import xarray as xr

    import xda_hybrid as xh

    p = Path(source)
    if p.exists():
        if p.is_dir() or p.suffix == ".zarr":
            _need_zarr()
            return xr.open_zarr(p, chunks={} if chunks else None)
        return xr.open_dataset(p, chunks={"time": chunks} if chunks else None)
    name, _, rest = source.partition(":")
    if name in xh.catalog().entries:
        params = _params([kv for kv in rest.split(",") if kv]) if rest else {}
        return xh.open_dataset(name, chunks={"time": chunks} if chunks else None, **params)
    raise SystemExit(f"error: {source!r} is neither a file/zarr store nor a catalog entry")


def _need_zarr() -> None:
    try:
        import zarr  # noqa: F401
    except ImportError:
        raise SystemExit("error: zarr stores need the 'zarr' package (pip install zarr)") from None


def _write(ds, path: str) -> None:
    """Write ``ds`` atomically: to a temporary file (or store) next to ``path``, then rename it into place.

    A killed run never leaves a half-written output under the final name: the
    previous file (if any) stays until the new one is complete.
    """
    import os
    import shutil
    import tempfile

    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    if path.endswith(".zarr"):
        _need_zarr()
        tmp = tempfile.mkdtemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        try:
            ds.to_zarr(tmp, mode="w")
            old = None
            if os.path.exists(path):
                old = tempfile.mkdtemp(dir=folder, prefix=f".{name}.", suffix=".old")
                os.rmdir(old)
                os.rename(path, old)
            os.rename(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    else:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            ds.to_netcdf(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _write_json(obj, path) -> None:
    """``json.dump`` to ``path`` atomically (temporary file, then rename)."""
    import os
    import tempfile

    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------- subcommands
def _cmd_datasets(args) -> int:
    import xda_hybrid as xh

    cat = xh.catalog()
    for name in cat:
        entry = cat.entries[name]
        print(f"{name}: {entry.metadata.get('description', '')}")
        for k, up in entry.user_parameters.items():
            print(f"    {k} ({up.dtype}, default {up.default!r}): {up.description}")
    if args.registry:
        from .data.cache import _sha256, fetch

        print("\n# registry lines of the default datasets (xda_hybrid/data/registry.txt):")
        for name in cat:
            path = fetch(name)
            print(f"{path.name} sha256:{_sha256(path)}")
    return 0


def _cmd_twin(args) -> int:
    """The lead's ``twin`` job (unchanged): classical 4DVAR twin of a published setup."""
    import platform

    from . import twins

    if args.system == "lorenz96":
        res = twins.lorenz96_4dvar(n_windows=args.windows, max_iter=args.iterations or 50, progress=args.progress)
        print("Lorenz96 twin: N=40, F=8, dt=0.05, window 10, 50 % of sites observed, noise std 1")
        rows = [
            ("first guess trajectory RMSE", res["first_guess_rmse"]),
            ("4DVAR trajectory RMSE", res["trajectory_rmse"]),
            ("4DVAR initial-state RMSE", res["initial_rmse"]),
            ("L-BFGS iterations (mean)", res["iterations"]),
            ("seconds per window", res["seconds_per_window"]),
        ]
    else:
        res = twins.shallow_water_4dvar(
            n_windows=args.windows,
            max_iter=args.iterations or 250,
            grad_weight=args.grad_weight,
            div_weight=args.div_weight,
            progress=args.progress,
        )
        print("Shallow-water twin: 64x64, H=100 m, height observed at steps 0,3,6,9 (noise 0.05 m)")
        rows = [
            ("endpoint error (m/s)", res["endpoint_error"]),
            ("angular error (deg)", res["angular_error"]),
            ("||lap w0|| analysis", res["laplacian"]),
            ("||lap w0|| truth", res["laplacian_true"]),
            ("L-BFGS iterations (mean)", res["iterations"]),
            ("seconds per window", res["seconds_per_window"]),
        ]
    print(f"windows: {res['n_windows']}   machine: {platform.processor() or platform.machine()}")
    for name, val in rows:
        print(f"  {name:<30s} {val:10.4f}")
    return 0


def _cmd_fit(args) -> int:
    ds = _open(args.input, args.chunks)
    fitted = ds.da4d.fit(
        model=args.model, model_params=_params(args.param) or None, window=args.window, stride=args.stride,
        epochs=args.epochs, batch_size=args.batch_size, method=args.method, learn=args.learn or None,
        device=args.device, progress=not args.quiet, validation=args.validation, seed=args.seed, lr=args.lr,
        smoothness=args.smoothness,
    )
    fitted.save(args.output)
    h = fitted.history
    print(f"fitted {fitted.method} inversion ({fitted.model_name}, window {fitted.window}) in "
          f"{fitted.info['wall_time']:.1f} s; final training cost {float(h.train_cost[-1]):.4g}; saved to {args.output}")
    if fitted.learned:
        print(f"learned parameters: {fitted.parameters}")
    return 0


def _cmd_assimilate(args) -> int:
    import xda_hybrid as xh

    ds = _open(args.input, args.chunks)
    fitted = xh.load(args.fitted) if args.fitted else None
    an = ds.da4d.assimilate(
        fitted, method=args.method, model=None if fitted else args.model,
        model_params=None if fitted else (_params(args.param) or None), window=args.window,
        iterations=args.iterations, cycle=args.cycle, progress=not args.quiet, batch_size=args.batch_size,
        smoothness=args.smoothness,
    )
    _write(an, args.output)
    print(f"{an.attrs['method']} analysis of {an.attrs['n_windows']} windows in {an.attrs['wall_time']:.1f} s "
          f"(final cost per window {an.attrs['final_cost_per_window']:.4g}); written to {args.output}")
    return 0


def _scores(an, truth) -> dict[str, float]:
    import numpy as np

    e = np.hypot(an["u"] - truth["u_true"], an["v"] - truth["v_true"])
    speed = float(np.hypot(truth["u_true"], truth["v_true"]).mean())
    clear = truth["tracer_obs"].notnull()
    terr = (an["tracer"] - truth["tracer_true"])
    return {
        "epe": float(e.mean()),
        "rel_epe": float(e.mean()) / speed,
        "tracer_rmse_clear": float(np.sqrt((terr.where(clear) ** 2).mean())),
        "tracer_rmse_cloud": float(np.sqrt((terr.where(~clear) ** 2).mean())),
        "cost": float(an.attrs["final_cost_per_window"]),
        "time": float(an.attrs["wall_time"]),
    }


def _cmd_demo(args) -> int:
    import numpy as np
    import torch

    import xda_hybrid as xh
    from .front import plots

    t0 = time.perf_counter()
    # one thread by default: the tensors are small, and several OpenMP threads on a busy
    # (shared or oversubscribed) machine can be 10-30x slower than one
    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        size, length, epochs, iters, window = 16, 16, 2, 5, 3
    else:
        size, length, epochs, iters, window = args.size, args.length, args.epochs, args.iterations, args.window
    ds = xh.open_dataset("tracer_motion", size=size, length=length, seed=args.seed)
    n_train = int(round(0.7 * length))
    train, test = ds.isel(time=slice(0, n_train)), ds.isel(time=slice(n_train, None))
    print(f"tracer_motion: {size}x{size} cells of {float(ds.x[1] - ds.x[0]) / 1e3:g} km, {length} hourly frames, "
          f"{ds.attrs['cloud_fraction']:.0%} cloud; training on frames 0-{n_train - 1}, "
          f"testing on {n_train}-{length - 1} (held out)")
    fitted = train.da4d.fit(window=window, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                            progress=not args.quiet, seed=args.seed, network={"width": 16, "levels": 2})
    print(f"fit: {epochs} epochs in {fitted.info['wall_time']:.1f} s")
    analyses = {
        "learned": test.da4d.assimilate(fitted),
        "hybrid": test.da4d.assimilate(fitted, method="hybrid", iterations=max(1, iters // 10)),
        "4dvar": test.da4d.assimilate(method="4dvar", window=window, iterations=iters),
    }
    zero = analyses["learned"].copy(deep=True)
    zero["u"][:] = 0.0
    zero["v"][:] = 0.0
    speed = float(np.hypot(test.u_true, test.v_true).mean())
    rows = {name: _scores(an, test) for name, an in analyses.items()}
    print(f"\nheld-out windows: mean true speed {speed:.3g} m/s (zero-velocity endpoint error {speed:.3g})")
    head = f"{'method':<9} {'EPE [m/s]':>10} {'EPE/|w|':>8} {'SST RMSE clear':>15} {'SST RMSE cloud':>15} {'cost/window':>12} {'time [s]':>9}"
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        print(f"{name:<9} {r['epe']:>10.4f} {r['rel_epe']:>8.3f} {r['tracer_rmse_clear']:>15.4f} "
              f"{r['tracer_rmse_cloud']:>15.4f} {r['cost']:>12.4g} {r['time']:>9.2f}")
    _write(analyses["learned"], str(out / "analysis.nc"))
    for name in ("4dvar", "hybrid"):
        _write(analyses[name], str(out / f"analysis_{name}.nc"))
    frame = test.sizes["time"] // 2
    plots.plot_velocity(analyses, truth=test, time=frame, path=out / "velocity.png")
    plots.plot_velocity({"learned": analyses["learned"]}, truth=test, time=frame, streamlines=True,
                        path=out / "streamlines.png")
    plots.plot_errors(analyses, test, time=frame, path=out / "errors.png")
    plots.plot_history(fitted, path=out / "training.png")
    _write_json({"mean_speed": speed, "methods": rows, "size": size, "length": length, "epochs": epochs},
                out / "scores.json")
    print(f"\nwrote {out / 'analysis.nc'} (+ analysis_4dvar.nc, analysis_hybrid.nc), velocity.png, streamlines.png, "
          f"errors.png, training.png, scores.json in {out}; total {time.perf_counter() - t0:.1f} s")
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xda-hybrid", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="learned inversion vs 4DVAR on tracer_motion (table, analysis.nc, PNGs)")
    d.add_argument("--out", default="xda-hybrid-demo", help="output folder (default ./xda-hybrid-demo)")
    d.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (for tests)")
    d.add_argument("--size", type=int, default=32, help="cells per side (default 32)")
    d.add_argument("--length", type=int, default=64, help="frames (default 64; the first 70 %% train the network)")
    d.add_argument("--window", type=int, default=10,
                   help="frames per window (default 10: sub-cell hourly displacements need several frames)")
    d.add_argument("--epochs", type=int, default=300)
    d.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--lr", type=float, default=3e-3)
    d.add_argument("--iterations", type=int, default=100, help="4DVAR iterations per window")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_demo)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("input", help="netCDF file, zarr store, or catalog entry (e.g. 'lorenz96' or 'lorenz96:size=20')")
    common.add_argument("-o", "--output", required=True)
    common.add_argument("--model", default=None, help="lorenz96 | advection | image | shallow_water (default ds.attrs['model'])")
    common.add_argument("--param", action="append", metavar="NAME=VALUE", help="model option (repeatable)")
    common.add_argument("--window", type=int, default=None)
    common.add_argument("--batch-size", type=int, default=32)
    common.add_argument("--smoothness", type=float, default=None)
    common.add_argument("--chunks", type=int, default=None, help="open lazily with dask, this many frames per chunk")
    common.add_argument("--quiet", action="store_true")

    f = sub.add_parser("fit", parents=[common], help="train an inversion network and save it (.pt)")
    f.add_argument("--stride", type=int, default=1)
    f.add_argument("--epochs", type=int, default=20)
    f.add_argument("--method", choices=["learned", "over4dvar"], default="learned")
    f.add_argument("--learn", action="append", metavar="PARAM", help="model parameter trained jointly (repeatable)")
    f.add_argument("--validation", type=float, default=0.1)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--device", default=None)
    f.set_defaults(func=_cmd_fit, window=10)

    a = sub.add_parser("assimilate", parents=[common], help="write the analysis of a dataset (.nc or .zarr)")
    a.add_argument("--fitted", default=None, help="a network saved by 'fit' (methods learned, hybrid)")
    a.add_argument("--method", choices=["learned", "4dvar", "hybrid"], default=None)
    a.add_argument("--iterations", type=int, default=None)
    a.add_argument("--cycle", type=int, default=None)
    a.set_defaults(func=_cmd_assimilate)

    s = sub.add_parser("datasets", help="list the packaged catalog")
    s.add_argument("--registry", action="store_true", help="also generate the defaults and print their hashes")
    s.set_defaults(func=_cmd_datasets)

    t = sub.add_parser("twin", help="run a classical 4DVAR twin experiment and print its scores")
    t.add_argument("system", choices=["lorenz96", "shallow_water"])
    t.add_argument("--windows", type=int, default=100, help="number of windows (default 100)")
    t.add_argument("--iterations", type=int, default=None, help="L-BFGS iterations (default 50 / 250)")
    t.add_argument("--grad-weight", type=float, default=0.0, help="weight of ½‖∇w₀‖² (shallow water)")
    t.add_argument("--div-weight", type=float, default=0.0, help="weight of ½‖∇·w₀‖² (shallow water)")
    t.add_argument("--progress", action="store_true", help="show a progress bar")
    t.set_defaults(func=_cmd_twin)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (errors in the inputs give 2 with a one-line message)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"xda-hybrid {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
