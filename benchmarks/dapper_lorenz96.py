"""DAPPER's cycled EnKF / iEnKS as an external reference on the uncertainty twin (GitHub issue 8).

Optional reference: needs DAPPER (``pip install 'xda-hybrid[reference]'``), which
is never a dependency of the package itself.

Setup — the one of ``benchmarks/uncertainty_lorenz96.py``: Lorenz96 N=40, F=8,
RK4 dt=0.05; every model step observed, each site with probability 0.5 (a new
random subset at every step, as ``lorenz96_twin`` draws it: Bernoulli mask per
site and step), noise std 1.  DAPPER is fed **the very same truth and
observations** as that benchmark's test windows: ``twin(n_test, seed=2)``
(``gap=0``: the windows are consecutive pieces of one trajectory, so their
frames are one observed sequence of ``10·n_test`` steps).  The observation
operator is time dependent (``dict(time_dependent=...)`` in DAPPER's HMM): at
each step it picks the sites that the twin observed there.

The filters need a spin-up, which the test windows do not have: they are
preceded by the ``--spinup`` steps (default 400, DAPPER's BurnIn of 20 time
units in ``mods/Lorenz96/sakov2008.py``) of the same trajectory before
window 0 (``lorenz96_trajectory(..., spinup=2000 - S, seed=2)``, bit-identical to
the twin's), observed in the same way by a separate seed.  The initial ensemble
is drawn from ``X0 = N(μ, I)`` with ``μ`` = the true state 400 steps before window 0
plus a unit Gaussian draw (DAPPER's twin convention: the truth is a draw of ``X0``;
a climatological ``X0`` made the iEnKS's first Gauss-Newton steps blow up).

Methods, settings copied from DAPPER's own Lorenz96 examples
(``dapper/mods/Lorenz96/*.py``, "suggested tuning"; none retuned for the 50 %
observation network):

* ``EnKF('PertObs', N=40, infl=1.06)`` — sakov2008 (Table 1 of Sakov & Oke 2008);
* ``EnKF('Sqrt', N=20, infl=1.04, rot=True)`` — sakov2008 (Bocquet 2015, Fig. 3);
* ``LETKF(N=20, infl=1.04, rot=True, loc_rad=5)`` — todter2015 (localised; the
  observation localiser built per step for that step's sites);
* ``iEnKS('Sqrt', N=20, Lag=4, xN=2)`` — sakov2008 (Bocquet & Sakov 2013; finite-size
  adaptive inflation, 10 Gauss-Newton iterations at most);
* ``iEnKS('Sqrt', N=19→20, Lag=2, infl=1.04)`` — bocquet2010_m40 (N raised to 20).

Scored time points: the **start of every test window** (steps 0, 10, 20, … of
the test sequence) — the ``x₀`` that uncertainty_lorenz96.py scores.  For
every method the **filter analysis** there (obs up to and including that
step); for the iEnKS also its **lag-smoothed** ensemble there ("s": obs up to
``Lag`` steps later as well).  Scores exactly as uncertainty_lorenz96.py
(its ``scores``: ``xda_hybrid.metrics.spread_skill``, ``crps_ensemble`` (fair),
``rank_histogram`` on torch tensors, members × windows × 40 sites).  Besides,
``rmse.a``: DAPPER's time-averaged analysis RMSE (RMSE of the ensemble mean
per step, averaged over all ``10·n_test`` steps of the test sequence).

Seconds per cycle: wall time of ``xp.assimilate`` over spin-up + test
sequence, less the time in DAPPER's own diagnostics (``Stats.assess``), divided
by the number of cycles (one model step of every member + one analysis; the
iEnKS re-integrates its Lag-step window at each iteration); per member: ÷ N.

``--with-ours`` (default unless ``--quick``) adds the EDA row of
uncertainty_lorenz96.py on the same test windows (K=20 4DVARs, 50 L-BFGS
iterations, perturbed observations) by importing its functions.  The
generative inversion is not retrained here (≈ 450 s); the footnote cites its
figures from docs/benchmarks.md (same 200 test windows in the full run).

Usage (1 thread)::

    python benchmarks/dapper_lorenz96.py            # 200 test windows + EDA (~2 min)
    python benchmarks/dapper_lorenz96.py --quick    # 50 test windows, no EDA (~30 s)
"""
from __future__ import annotations

import argparse
import os
import sys

# BLAS threads must be fixed before numpy loads (DAPPER's analyses are numpy)
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=1)
_THREADS = _pre.parse_known_args()[0].threads
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(_THREADS))

import contextlib  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from machine import describe  # noqa: E402
from uncertainty_lorenz96 import FORCING, N_SITES, NOISE, OBS_FRACTION, WINDOW, DT, scores, twin  # noqa: E402
from xda_hybrid import metrics  # noqa: E402
from xda_hybrid.data.synthetic import lorenz96_trajectory  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TRAJ_SPINUP = 2000  # spin-up of lorenz96_trajectory (the twin's default)

#: cited from docs/benchmarks.md (uncertainty_lorenz96.py, 200 test windows, K=20): x0 scores
GENERATIVE_CITED = {"spread": 0.626, "skill": 0.712, "ratio": 0.90, "crps": 0.378, "sec": 1.06e-04}


def import_dapper():
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its import warns about live plotting
            import dapper  # noqa: F401
            import dapper.da_methods as da
            import dapper.mods as modelling
            import dapper.stats
            import dapper.tools.progressbar
            from dapper.mods.Lorenz96 import dstep_dx, step
            from dapper.tools.localization import nd_Id_localization
            from dapper.tools.seeding import set_seed
    except ImportError as err:
        sys.exit(f"dapper_lorenz96.py needs DAPPER, an optional benchmark extra ({err}):\n"
                 f"    pip install 'xda-hybrid[reference]'")
    dapper.tools.progressbar.disable_progbar = True
    return dapper, da, modelling, step, dstep_dx, nd_Id_localization, set_seed


def methods(da):
    return {
        "EnKF PertObs N=40 infl=1.06": da.EnKF("PertObs", N=40, infl=1.06),
        "EnKF Sqrt N=20 infl=1.04": da.EnKF("Sqrt", N=20, infl=1.04, rot=True),
        "LETKF N=20 infl=1.04 loc_rad=5": da.LETKF(N=20, infl=1.04, rot=True, loc_rad=5),
        "iEnKS Sqrt N=20 Lag=4 xN=2": da.iEnKS("Sqrt", N=20, Lag=4, xN=2),
        "iEnKS Sqrt N=20 Lag=2 infl=1.04": da.iEnKS("Sqrt", N=20, Lag=2, infl=1.04),
    }


def sequence(n_test: int, spinup: int):
    """Truth (K+1, 40) from step -spinup and the observations (Ko+1, 40; NaN = unobserved) from step -spinup+1.

    DAPPER's ``k`` is the test step + ``spinup``; its ``ko`` is ``k - 1``.  Also returns the test twin.
    """
    truth_te, obs_te = twin(n_test, seed=2)
    truth = truth_te.reshape(-1, N_SITES).numpy()
    # Observations keep 0 at unobserved points; mark them NaN again from the mask (inv_var = 0)
    obs = torch.where(obs_te.inv_var > 0, obs_te.values, float("nan")).reshape(-1, N_SITES).numpy()
    pre = lorenz96_trajectory(spinup + 1, N_SITES, FORCING, DT, spinup=TRAJ_SPINUP - spinup, seed=2)[:, 0]
    if not torch.equal(pre[-1], truth_te[0, 0, 0]):
        raise RuntimeError("the spin-up trajectory does not join the twin's first test state")
    gen = torch.Generator().manual_seed(2 + 7_000_001)  # the spin-up steps' own observations
    shape = (spinup - 1, N_SITES)
    mask = torch.rand(shape, generator=gen, dtype=torch.float64) < OBS_FRACTION
    noisy = pre[1:-1] + NOISE * torch.randn(shape, generator=gen, dtype=torch.float64)
    obs_pre = torch.where(mask, noisy, torch.full_like(noisy, float("nan"))).numpy()
    return np.concatenate([pre[:-1].numpy(), truth]), np.concatenate([obs_pre, obs]), truth_te


def hmm(modelling, step, dstep_dx, nd_Id_localization, xx0: np.ndarray, obs_all: np.ndarray, spinup: int):
    ko_max = len(obs_all) - 1
    ops, yy = [], np.empty(ko_max + 1, dtype=object)
    for ko, y in enumerate(obs_all):
        idx = np.flatnonzero(np.isfinite(y))
        if idx.size == 0:
            raise RuntimeError(f"no site observed at ko={ko}")
        ops.append(modelling.Operator(M=idx.size, model=lambda e, t=None, idx=idx: e[..., idx], noise=NOISE**2,
                                      localizer=nd_Id_localization((N_SITES,), (2,), obs_inds=idx)))
        yy[ko] = y[idx]
    # DAPPER's twin convention: the truth's initial state is a draw of X0 (here N(mu, 1), mu = truth + N(0, 1))
    mu = xx0 + np.random.default_rng(2).standard_normal(N_SITES)
    model = modelling.HiddenMarkovModel(
        dict(M=N_SITES, model=step, linear=dstep_dx, noise=0),
        # the iEnKS asks for operators past the last observation while it drains its lag
        dict(time_dependent=lambda ko: ops[min(ko, ko_max)]),
        modelling.Chronology(DT, dko=1, Ko=ko_max, BurnIn=spinup * DT),
        modelling.GaussRV(mu=mu, C=1.0),
    )
    return model, yy


def run_dapper(dapper, xp, model, xx, yy, keep: set[int]):
    """Assimilate; return the captured ensembles {('a'|'s', k): (N, 40)} at steps ``keep`` and the timing."""
    captured, in_stats = {}, [0.0]
    orig = dapper.stats.Stats.assess

    def assess(self, k, ko=None, faus=None, E=None, **kw):
        t = time.perf_counter()
        subs = faus if faus is not None else ("u" if ko is None else "au")
        if E is not None and k in keep:
            for s in subs:
                if s in "as":
                    captured[(s, k)] = np.array(E, dtype=np.float64)
        out = orig(self, k, ko, faus, E=E, **kw)
        in_stats[0] += time.perf_counter() - t
        return out

    dapper.stats.Stats.assess = assess
    try:
        t = time.perf_counter()
        xp.assimilate(model, xx, yy, liveplots=False, store_u=False)
        wall = time.perf_counter() - t
    finally:
        dapper.stats.Stats.assess = orig
    return captured, wall - in_stats[0], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50 test windows, no EDA")
    ap.add_argument("--n-test", type=int, help="test windows (default 200, quick 50)")
    ap.add_argument("--spinup", type=int, default=400, help="observed steps before the test windows")
    ap.add_argument("--with-ours", action=argparse.BooleanOptionalAction, default=None,
                    help="add the EDA row of uncertainty_lorenz96.py (default: on unless --quick)")
    ap.add_argument("--members", type=int, default=20, help="EDA members")
    ap.add_argument("--iterations", type=int, default=50, help="L-BFGS iterations per EDA member")
    ap.add_argument("--seed", type=int, default=3000, help="DAPPER's random seed (initial ensemble, PertObs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "dapper_lorenz96"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_test = args.n_test or (50 if args.quick else 200)
    with_ours = (not args.quick) if args.with_ours is None else args.with_ours
    dapper, da, modelling, step, dstep_dx, nd_Id_localization, set_seed = import_dapper()

    print("DAPPER reference — cycled EnKF / iEnKS on the Lorenz96 uncertainty twin")
    print(describe())
    print(f"DAPPER {dapper.__version__}, numpy {np.__version__} (BLAS threads {os.environ['OPENBLAS_NUM_THREADS']})")
    print(f"setup: N={N_SITES}, F={FORCING}, dt={DT}, every step observed, {OBS_FRACTION:.0%} of the sites at random "
          f"per step, noise std {NOISE}; the test sequence of uncertainty_lorenz96.py ({n_test} windows of {WINDOW} = "
          f"{n_test * WINDOW} steps, seed 2) after {args.spinup} observed spin-up steps; scored at the {n_test} window "
          f"starts (x0)", flush=True)
    t_all = time.perf_counter()
    xx, obs_all, truth_te = sequence(n_test, args.spinup)
    model, yy = hmm(modelling, step, dstep_dx, nd_Id_localization, xx[0], obs_all, args.spinup)
    n_cycles = len(yy)
    x0_steps = [args.spinup + w * WINDOW for w in range(n_test)]  # DAPPER k of each window start
    test_steps = list(range(args.spinup, args.spinup + n_test * WINDOW))
    x0_true = truth_te[:, 0]  # (n_test, 1, 40)
    keep = set(test_steps)

    rows = []
    for name, xp in methods(da).items():
        set_seed(args.seed)
        captured, sec, wall = run_dapper(dapper, xp, model, xx, yy, keep)
        # rmse.a: DAPPER's time-averaged analysis RMSE over every step of the test sequence
        ea = np.stack([captured[("a", k)] for k in test_steps])
        rmse_a = float(np.sqrt(((ea.mean(1) - xx[test_steps]) ** 2).mean(1)).mean())
        subs = ["a", "s"] if ("s", x0_steps[0]) in captured else ["a"]
        for sub in subs:
            e = np.stack([captured[(sub, k)] for k in x0_steps], axis=1)  # (N, n_test, 40)
            members = torch.from_numpy(e).unsqueeze(2)  # (N, n_test, 1, 40) like the EDA's members
            s = scores(members, x0_true)
            rows.append({"method": name, "on": "x0 filter" if sub == "a" else "x0 smoothed", **s,
                         "rmse_a": rmse_a if sub == "a" else float("nan"), "sec": sec / n_cycles,
                         "sec_member": sec / n_cycles / xp.N})
        print(f"[{time.perf_counter() - t_all:5.0f} s] {name}: {n_cycles} cycles in {wall:.1f} s "
              f"({wall - sec:.1f} s of it in DAPPER's diagnostics); rmse.a {rmse_a:.3f}", flush=True)

    if with_ours:
        from xda_hybrid.learning import first_guess
        from xda_hybrid.models.lorenz96 import Lorenz96
        from xda_hybrid.observation import ObservationOperator
        from xda_hybrid.variational import FourDVarCost, eda

        truth_w, obs_w = twin(n_test, seed=2)  # as uncertainty_lorenz96.py; the same windows as above
        assert torch.equal(truth_w, truth_te)
        l96 = Lorenz96(forcing=FORCING, dt=DT)
        op = ObservationOperator(l96)
        cost = FourDVarCost(l96, op, WINDOW)
        k = args.members
        res = eda(cost, obs_w, k, first_guess(obs_w, op, 1), generator=torch.Generator().manual_seed(11),
                  max_iter=args.iterations)
        rows.append({"method": f"EDA K={k} (4DVAR on perturbed obs.)", "on": "x0 window",
                     **scores(res.members, x0_true), "rmse_a": float("nan"),
                     "sec": res.wall_time / n_test, "sec_member": res.wall_time / (k * n_test)})
        print(f"[{time.perf_counter() - t_all:5.0f} s] EDA: {n_test} windows x {k} members in "
              f"{res.wall_time:.1f} s", flush=True)

    # --- table ---
    print()
    head = (f"{'method':<38} {'on':<11} {'spread':>7} {'RMSE mean':>9} {'sp/sk':>6} {'CRPS':>7} {'rmse.a':>7} "
            f"{'s/cycle':>9} {'s/member':>9}")
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        name = r["method"] if r["method"] != last else ""
        last = r["method"]
        ra = f"{r['rmse_a']:7.3f}" if r["rmse_a"] == r["rmse_a"] else f"{'':7}"
        print(f"{name:<38} {r['on']:<11} {r['spread']:7.3f} {r['skill']:9.3f} {r['ratio']:6.2f} {r['crps']:7.3f} "
              f"{ra} {r['sec']:9.2e} {r['sec_member']:9.2e}")
    g = GENERATIVE_CITED
    print(f"{'generative inversion (cited) *':<38} {'x0 window':<11} {g['spread']:7.3f} {g['skill']:9.3f} "
          f"{g['ratio']:6.2f} {g['crps']:7.3f} {'':7} {'':9} {g['sec']:9.2e}")
    print("-" * len(head))
    print("x0 filter: analysis at each window start (obs up to it); x0 smoothed: iEnKS lag-smoothed ensemble there "
          "(obs up to Lag steps later); x0 window: the window methods' x0 (obs of the 10 frames from it, no past).")
    print("RMSE mean: RMSE of the ensemble mean pooled over windows and sites; sp/sk = sqrt((K+1)/K) spread/RMSE; "
          "CRPS fair; rmse.a: DAPPER's time-averaged analysis RMSE over all test steps.")
    print("s/cycle: one cycle (forecast of all members over one step + analysis), DAPPER diagnostics excluded; "
          "for the EDA one window (K members); s/member: per cycle and member (EDA: per sample).")
    print(f"* not rerun: x0 scores of the generative inversion from docs/benchmarks.md (uncertainty_lorenz96.py, "
          f"200 test windows{'' if n_test == 200 else ', not these ' + str(n_test)}, K=20; EDA there: 0.688 / 0.702 / "
          f"1.00 / 0.368).")
    print("rank histograms of x0 (members+1 bins, counts):")
    for r in rows:
        print(f"  {r['method']} [{r['on']}]: {r['rank_hist']}")
    print(f"total benchmark time {time.perf_counter() - t_all:.0f} s")

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "on", "n_members", "spread", "rmse_of_mean", "spread_skill_ratio", "crps_fair",
                    "rmse_a_all_test_steps", "seconds_per_cycle", "seconds_per_cycle_per_member", "rank_histogram"])
        for r in rows:
            w.writerow([r["method"], r["on"], r["n_members"], f"{r['spread']:.5f}", f"{r['skill']:.5f}",
                        f"{r['ratio']:.4f}", f"{r['crps']:.5f}", f"{r['rmse_a']:.5f}", f"{r['sec']:.4e}",
                        f"{r['sec_member']:.4e}", " ".join(map(str, r["rank_hist"]))])
    print(f"wrote {args.out}.csv")


if __name__ == "__main__":
    main()
