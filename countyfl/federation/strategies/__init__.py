"""Strategies of the county node, composed the way Flower composes its own.

Plaintext runs use Flower's FedAvg and FedProx as they are; encrypted runs
:class:`~countyfl.federation.strategies.encrypted.EncryptedFedAvg` (and its FedProx);
either is wrapped in a :class:`~countyfl.federation.strategies.recording.RecordingStrategy`
that keeps each institution's replies.
"""
