"""Common clinical schema, real-data loaders, validation and quarantine.

Which data set a run trains on, and how it is partitioned into institutions, is a
scenario's business (:mod:`countyfl.scenarios`); this package reads, validates and
preprocesses rows.
"""

from __future__ import annotations

from countyfl.data.federated import CareLevel, FederatedDataset, InstitutionData

__all__ = ["CareLevel", "FederatedDataset", "InstitutionData"]
