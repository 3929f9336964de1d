"""Generate-once cache of the packaged datasets, through Pooch.

:func:`fetch` returns the path of a netCDF3 file holding the dataset of a
catalog entry for given parameters.  The "download" is a Pooch downloader
callable that runs the package's own generator
(:mod:`xda_hybrid.data.datasets`) and writes the file with
``engine="scipy"`` (netCDF3 embeds no library version, so the bytes are the
same on every run of the same floating-point environment).

Integrity
---------
* Every file gets a sidecar ``<file>.sha256`` holding the SHA-256 of the bytes
  written, recorded at generation.  On every later :func:`fetch` Pooch checks
  the file against it; a file that no longer matches (corrupted, truncated,
  edited) — or that has lost its sidecar — is regenerated, with a warning.
* ``registry.txt`` next to this module lists reference hashes of the default
  datasets (float64 CPU generation, recorded when the generators last
  changed).  A fresh generation is checked against it; a mismatch means a
  different floating-point environment (another torch/BLAS build or CPU), not
  bad data: the file is kept and a :class:`ReproducibilityWarning` is issued.

Concurrency: the generator writes to a temporary file in the cache folder and
Pooch moves it into place (an atomic ``rename`` on one filesystem); the
sidecar is written the same way *before* the data file appears, so a file
that exists always has its sidecar.  Two processes generating the same file
at once both produce identical bytes and the last rename wins.

The cache folder is ``$XDA_HYBRID_DATA_DIR`` when set (read at each call),
else ``pooch.os_cache("xda-hybrid")``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pooch

from .datasets import BUILDERS, FORMAT_VERSION, normalise_parameters

__all__ = [
    "ReproducibilityWarning",
    "cache_dir",
    "cache_key",
    "fetch",
    "generation_count",
    "reference_hashes",
]

ENV_VAR = "XDA_HYBRID_DATA_DIR"
_SIDECAR = ".sha256"

#: number of generator runs in this process (tests read it to check reuse)
generation_count: dict[str, int] = {name: 0 for name in BUILDERS}


class ReproducibilityWarning(UserWarning):
    """A regenerated file differs from the reference hash (another floating-point environment)."""


def cache_dir() -> Path:
    """The cache folder: ``$XDA_HYBRID_DATA_DIR`` or ``pooch.os_cache("xda-hybrid")``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path(pooch.os_cache("xda-hybrid"))


def cache_key(name: str, params: dict[str, Any]) -> str:
    """File name of entry ``name`` for the (normalised) ``params``: ``<name>-<16 hex>.nc``."""
    canon = json.dumps({"name": name, "params": params, "format": FORMAT_VERSION}, sort_keys=True)
    return f"{name}-{hashlib.sha256(canon.encode()).hexdigest()[:16]}.nc"


def reference_hashes() -> dict[str, str]:
    """``{file name: sha256}`` of the packaged reference registry (may be empty)."""
    try:
        text = resources.files("xda_hybrid.data").joinpath("registry.txt").read_text()
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        return {}
    out = {}
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) == 2:
            out[parts[0]] = parts[1].removeprefix("sha256:")
    return out


def _sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _public(path: str | Path) -> None:
    """Give a ``mkstemp`` file (mode 0600) the usual permissions (0666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        _public(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class _Generator:
    """Pooch downloader: simulate the dataset and write it as netCDF3 to Pooch's temporary path."""

    def __init__(self, name: str, params: dict[str, Any], final: Path):
        self.name, self.params, self.final = name, params, final

    def __call__(self, url: str, output_file: str, pooch_obj, check_only: bool = False):
        if check_only:
            return True
        ds = BUILDERS[self.name](**self.params)
        generation_count[self.name] += 1
        out = Path(output_file)
        # write next to the target, then rename: never a partial file under Pooch's name either
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".part")
        os.close(fd)
        try:
            ds.to_netcdf(tmp, engine="scipy", format="NETCDF3_64BIT")
            _public(tmp)
            os.replace(tmp, out)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        # the sidecar goes in place before Pooch moves the data file to its final name
        _atomic_write_text(Path(str(self.final) + _SIDECAR), _sha256(out) + "\n")


def _read_sidecar(path: Path) -> str | None:
    try:
        text = Path(str(path) + _SIDECAR).read_text().strip()
    except OSError:
        return None
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def fetch(name: str, **params) -> Path:
    """Path of the cached netCDF file of entry ``name`` with ``params``; generated on first use.

    Parameters
    ----------
    name : str
        One of ``lorenz96``, ``tracer_motion``, ``shallow_water``.
    **params
        Generator parameters (see :mod:`xda_hybrid.data.datasets`); omitted
        ones take their defaults, so ``fetch("lorenz96")`` and
        ``fetch("lorenz96", size=40)`` are the same file.

    Raises
    ------
    KeyError
        Unknown dataset name.
    TypeError
        Unknown parameter or a value of the wrong type.
    ValueError
        A parameter value the generator refuses.
    """
    params = normalise_parameters(name, params)
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create the data cache folder {folder} ({e.strerror}): set {ENV_VAR} to a "
                              "writable folder") from None
    fname = cache_key(name, params)
    path = folder / fname
    url = f"xda-hybrid://generate/{name}?{urlencode(sorted(params.items()))}"
    reference = reference_hashes().get(fname)

    known = None
    why = "it is not cached yet"
    if path.exists():  # checked before the sidecar: a file in place always had its sidecar first
        known = _read_sidecar(path)
        if known is None:
            why = f"cached {path} has no valid hash sidecar"
        elif _sha256(path) != known:
            why = f"cached {path} fails its hash check (corrupted or modified)"
            known = None
        if known is None:
            _writable(folder, fname, why)
            warnings.warn(f"{why}: regenerating it", RuntimeWarning, stacklevel=2)
            _remove(path)
    else:
        _writable(folder, fname, why)
    gen = _Generator(name, params, path)
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        if known is not None:  # verified just above; Pooch re-checks and returns it
            out = pooch.retrieve(url, known_hash=f"sha256:{known}", fname=fname, path=folder, downloader=gen)
        else:
            out = pooch.retrieve(url, known_hash=None, fname=fname, path=folder, downloader=gen)
            got = _read_sidecar(path) or _sha256(out)
            if reference is not None and got != reference:
                warnings.warn(
                    f"{fname} was generated with SHA-256 {got[:12]}… but the packaged reference is "
                    f"{reference[:12]}…: either this floating-point environment (torch/CPU build) does not "
                    f"reproduce the reference bits or the generator changed since the registry was recorded "
                    f"(`xda-hybrid datasets --registry` prints new lines); the data are used and cached with "
                    f"their own hash",
                    ReproducibilityWarning,
                    stacklevel=2,
                )
    finally:
        logger.setLevel(level)
    return Path(out)


def _writable(folder: Path, fname: str, why: str) -> None:
    """A clear error when ``fname`` must be (re)generated in a folder this process cannot write."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"the data cache folder {folder} is read-only for this process, but {fname} must be generated "
            f"({why}): set {ENV_VAR} to a writable folder (or ask its owner to regenerate the file)"
        )


def _remove(path: Path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def open_cached(name: str, chunks: Any = None, **params):
    """``xarray.open_dataset`` of :func:`fetch` (netCDF3, scipy engine)."""
    import xarray as xr

    path = fetch(name, **params)
    return xr.open_dataset(path, engine="scipy", chunks=chunks)
