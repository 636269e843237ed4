"""Which units a scan file's amplitudes are in: photon counts, or upstream's normalised convention
brought to photons (`photon_units`)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

log = logging.getLogger("ptycho_torch.data.contract")


def photon_units(arrays: dict[str, Any], mean_energy: Any) -> tuple[float, str]:
    """(factor, description): the stored amplitudes times factor are sqrt(photon counts).

    Upstream PtychoPINN stores *normalised* amplitudes (probe x object reproduces them) and keeps the
    dose apart: an `intensity_scale` key (photon amplitude = intensity_scale x stored) or an
    `nphotons` key (mean photons per pattern). Either brings the data to photons
    before the Poisson loss, so its eps floor and noise model mean photons. Without them the stored
    values are taken as sqrt(counts), as this project writes them. `nphotons` that the data already
    carry (our own simulations record it too) changes nothing: it rescales only data whose mean
    energy is below a tenth of it. `mean_energy` is a callable (the stored mean energy), called only
    when an `nphotons` value needs it.
    """
    nphotons = arrays.get("nphotons")  # a key of the file (metadata is free text: not trusted for units)
    if "intensity_scale" in arrays:
        s = float(np.asarray(arrays["intensity_scale"]).reshape(-1)[0])
        how = f"normalised amplitudes x intensity_scale {s:.4g} (upstream convention)"
        if nphotons is not None:  # two statements of the dose: say when they disagree, and which one counts
            n, implied = float(np.asarray(nphotons).reshape(-1)[0]), s * s * float(mean_energy())
            if n > 0 and not 0.8 < implied / n < 1.25:
                how += (f"; the file's nphotons {n:.4g} disagrees (intensity_scale implies {implied:.4g} mean "
                        "counts per pattern): intensity_scale was used, as it is the factor applied to the "
                        "amplitudes; fix the file's key that is wrong")
                log.warning("scan file: %s", how)
        return s, how
    if nphotons is not None:
        n, energy = float(np.asarray(nphotons).reshape(-1)[0]), float(mean_energy())
        if 0 < energy < 0.1 * n:
            s = math.sqrt(n / energy)
            return s, (f"normalised amplitudes brought to {n:.4g} photons per pattern (nphotons; mean energy "
                       f"{energy:.4g} as stored)")
    return 1.0, "sqrt(photon counts) (no intensity_scale key; nphotons absent or already met)"
