"""Energies, the staged optimizer and ``fit()``."""
from bodyfit.fitting.fit import FitResult, fit, load_config
from bodyfit.fitting.reprojection import ReprojectionEnergy, gmof

__all__ = ["fit", "FitResult", "load_config", "ReprojectionEnergy", "gmof"]
