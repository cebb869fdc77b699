"""Strategies run by the county node: FedAvg and FedProx, recording every institution's reply."""
