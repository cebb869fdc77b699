"""CKKS homomorphic encryption of model updates (TenSEAL): key material and the codec.

CKKS: Cheon, Kim, Kim and Song, "Homomorphic Encryption for Arithmetic of Approximate
Numbers", ASIACRYPT 2017. The county aggregator only adds ciphertexts, so no
multiplicative depth is needed: the smallest parameters that hold the sum are enough.
"""
