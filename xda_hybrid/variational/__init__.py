"""The variational layer: strong- and weak-constraint 4DVAR costs, regularisers and the L-BFGS solver."""
from .cost import Background, FourDVarCost
from .lbfgs import LBFGSResult, lbfgs
from .regularisers import divergence, divergence_penalty, gradient_penalty, laplacian
from .solver import fourdvar
from .weak import WeakFourDVarCost, WeakResult, weak_fourdvar

__all__ = [
    "Background",
    "FourDVarCost",
    "LBFGSResult",
    "WeakFourDVarCost",
    "WeakResult",
    "divergence",
    "divergence_penalty",
    "fourdvar",
    "gradient_penalty",
    "laplacian",
    "lbfgs",
    "weak_fourdvar",
]
