"""Every energy by the name stages weigh it by (``stages.<stage>.weights.<name>``)."""
from __future__ import annotations

from bodyfit.fitting.densepose import DensePoseEnergy
from bodyfit.fitting.energy import Energy
from bodyfit.fitting.prior_energies import (GMMPriorEnergy, InitPriorEnergy, JointLimitsEnergy, PosePriorEnergy,
                                            ShapePriorEnergy, TemporalEnergy)
from bodyfit.fitting.reprojection import ReprojectionEnergy
from bodyfit.fitting.silhouette import SilhouetteEnergy
from bodyfit.fitting.texture import TextureConsistencyEnergy
from bodyfit.fitting.world_landmarks import WorldLandmarksEnergy

ENERGIES: dict[str, type[Energy]] = {cls.name: cls for cls in (
    ReprojectionEnergy, JointLimitsEnergy, PosePriorEnergy, GMMPriorEnergy, InitPriorEnergy, ShapePriorEnergy,
    TemporalEnergy, SilhouetteEnergy, TextureConsistencyEnergy, DensePoseEnergy, WorldLandmarksEnergy)}

__all__ = ["ENERGIES"]
