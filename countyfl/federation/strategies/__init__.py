"""Strategies of the county node, composed the way Flower composes its own.

Plaintext runs use Flower's FedAvg and FedProx, training replies weighted by each site's
aggregation weight (:mod:`~countyfl.federation.strategies.weighted`); encrypted runs
:class:`~countyfl.federation.strategies.encrypted.EncryptedFedAvg` (and its FedProx);
either is wrapped in a :class:`~countyfl.federation.strategies.recording.RecordingStrategy`
that keeps each institution's replies.
"""
