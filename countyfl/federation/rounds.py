"""The ServerApp's rounds with a round's evaluation and the next round's training sent together.

Flower's ``Strategy.start`` sends each round's training, waits for every reply, then sends
its evaluation and waits again. In deployment each of those sends costs a wait at every
institution: a Flower 1.42 SuperNode that finds no message asks the SuperLink again only
3 s later (``flwr.supernode.start_client_internal``, fixed), and it has just found none,
having answered the previous phase a moment before the ServerApp could aggregate it.

A round's evaluation and the next round's training carry the same global model, and
neither depends on the other's replies, so :func:`run_rounds` sends them in one batch
(:meth:`~countyfl.federation.grid.PromptGrid.send_and_receive_batches`): a SuperNode takes
one, answers it and finds the other waiting at once, so a round costs one such wait
instead of two. A node asked both gets them as one message and answers once
(:mod:`countyfl.federation.fused`): each message costs a node a task and the SuperLink a
dozen requests. Everything else is Flower's loop: the same messages, aggregates and
history, and the strategy's calls in Flower's order but one (configure train r + 1 comes
before aggregate evaluate r, which samples nothing), so the same nodes are sampled. A
node that connects while round r is evaluated is asked to train from round r + 2.
"""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import Result, Strategy

from countyfl.federation.grid import WrappedGrid

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3600.0
"""Seconds to wait for a batch's replies (Flower's ``Strategy.start`` default)."""


def run_rounds(
    strategy: Strategy,
    grid: WrappedGrid,
    initial_arrays: ArrayRecord,
    num_rounds: int,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
    timeout: float = DEFAULT_TIMEOUT,
    fuse: bool = True,
) -> Result:
    """``strategy.start`` for ``num_rounds`` rounds, evaluation r sent with training r + 1
    (with ``fuse``, to a node asked both, as one message: :mod:`countyfl.federation.fused`)."""
    result = Result()
    if num_rounds < 1:
        return result
    arrays = initial_arrays
    (train_replies,) = grid.send_and_receive_batches(
        [strategy.configure_train(1, arrays, train_config, grid)], timeout=timeout
    )
    for server_round in range(1, num_rounds + 1):
        logger.info("[ROUND %s/%s] aggregating training", server_round, num_rounds)
        aggregated, train_metrics = strategy.aggregate_train(server_round, train_replies)
        if aggregated is not None:
            result.arrays = arrays = aggregated
        if train_metrics is not None:
            result.train_metrics_clientapp[server_round] = train_metrics
        batches = [list(strategy.configure_evaluate(server_round, arrays, evaluate_config, grid))]
        if server_round < num_rounds:
            batches.append(
                list(strategy.configure_train(server_round + 1, arrays, train_config, grid))
            )
        replies = grid.send_and_receive_batches(batches, timeout=timeout, fuse=fuse)
        evaluate_metrics = strategy.aggregate_evaluate(server_round, replies[0])
        if evaluate_metrics is not None:
            result.evaluate_metrics_clientapp[server_round] = evaluate_metrics
        if server_round < num_rounds:
            train_replies = replies[1]
    return result
