"""The variational layer: 4DVAR cost, regularisers and the L-BFGS solver."""
from .cost import Background, FourDVarCost
from .lbfgs import LBFGSResult, lbfgs
from .regularisers import divergence, divergence_penalty, gradient_penalty, laplacian
from .solver import fourdvar

__all__ = [
    "Background",
    "FourDVarCost",
    "LBFGSResult",
    "divergence",
    "divergence_penalty",
    "fourdvar",
    "gradient_penalty",
    "laplacian",
    "lbfgs",
]
