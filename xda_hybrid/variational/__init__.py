"""The variational layer: strong- and weak-constraint 4DVAR costs, regularisers and the L-BFGS solver."""
from .cost import Background, FourDVarCost
from .ensemble import EDAResult, Perturbed, eda, perturb, randomised_cost, randomised_fourdvar
from .lbfgs import LBFGSResult, lbfgs
from .regularisers import divergence, divergence_penalty, gradient_penalty, laplacian
from .solver import fourdvar
from .weak import WeakFourDVarCost, WeakResult, weak_fourdvar

__all__ = [
    "Background",
    "EDAResult",
    "FourDVarCost",
    "LBFGSResult",
    "Perturbed",
    "WeakFourDVarCost",
    "WeakResult",
    "divergence",
    "divergence_penalty",
    "eda",
    "fourdvar",
    "gradient_penalty",
    "laplacian",
    "lbfgs",
    "perturb",
    "randomised_cost",
    "randomised_fourdvar",
    "weak_fourdvar",
]
