"""CheXpert observation names (short aliases used throughout the generator)."""

from __future__ import annotations

from ...labels import CHEXPERT_OBSERVATIONS

NF, ECM, CARD, LES, OPA, EDE, CON, PNA, ATE, PTX, EFF, PLO, FRA, SD = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
assert set(CHEXPERT_OBSERVATIONS) == {NF, ECM, CARD, LES, OPA, EDE, CON, PNA, ATE, PTX, EFF, PLO, FRA, SD}

#: Observations that are drawn as findings (everything but No Finding and Support Devices).
ABNORMALITIES = (ECM, CARD, LES, OPA, EDE, CON, PNA, ATE, PTX, EFF, PLO, FRA)
