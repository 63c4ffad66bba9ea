"""The fitting engine: Observations -> Fitter -> FitResult; energies, stages, the optimizer."""
from bodyfit.fitting.config import ConfigError, FitConfig, StageConfig, load_config
from bodyfit.fitting.energies import ENERGIES
from bodyfit.fitting.fitter import Fitter, FitResult
from bodyfit.fitting.reprojection import gmof

__all__ = ["Fitter", "FitResult", "FitConfig", "StageConfig", "load_config", "ConfigError",
           "ENERGIES", "gmof"]
