"""Record, metric and config keys exchanged between ServerApp and ClientApp: defined once here."""

from __future__ import annotations

# Records in a Flower message
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# A ConfigRecord in every reply naming the institution (a name is not a metric)
SITE = "site"
INSTITUTION_ID = "institution-id"
# ... and the township it belongs to, where the scenario knows it (the county's levels)
TOWNSHIP = "township"

# Node config of a deployed SuperNode: the path of its site.toml
SITE_CONFIG = "site-config"

# Config sent with a task
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"

# Metrics a ClientApp replies with
NUM_EXAMPLES = "num-examples"
# The weight of a training reply in the county's average (the CKKS update is Enc(weight x w)):
# the noisy count, or a function of it and public settings (countyfl.privacy.weighting)
AGGREGATION_WEIGHT = "aggregation-weight"
PARTITION_ID = "partition-id"
LOSS = "loss"
ACCURACY = "accuracy"
AUC = "auc"
BRIER = "brier"
ECE = "ece"

EPSILON = "epsilon"
BUDGET_EPSILON = "budget-epsilon"
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
# The final evaluation's calibration sums over a site's TRAINING rows (DP, ledger-paid) and
# the run's noisy count they are taken over (countyfl.privacy.calibration)
CALIBRATION_POSITIVES = "calibration-positives"
CALIBRATION_RISK = "calibration-risk"
CALIBRATION_SPREAD = "calibration-spread"
CALIBRATION_ROWS = "calibration-rows"
# Distributed noise: the three sums travel as one CKKS vector in this ArrayRecord
CALIBRATION_SUMS = "calibration-sums"
CIPHERTEXT = "ciphertext"

# Error code of a reply in which an institution refuses a task (privacy budget, policy)
REFUSED_ERROR_CODE = 4030
# Error code of a reply in which a site reports that it failed, or refused to release a
# reply (countyfl.federation.release_guard)
SITE_FAILURE_ERROR_CODE = 5030

EVALUATION_METRICS = (LOSS, ACCURACY, AUC, BRIER, ECE)
