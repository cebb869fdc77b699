"""The ClientApp each institution runs: local training and evaluation on its own split."""

from __future__ import annotations

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from countyfl import keys, models
from countyfl.clients.training import evaluate, train
from countyfl.config import RunConfig, parse_run_config
from countyfl.data import InstitutionData, load_scenario
from countyfl.federation.records import arrays_of, load_arrays, model_to_arrays, server_round_of


def _institution(config: RunConfig, context: Context) -> tuple[int, InstitutionData]:
    partition_id = int(str(context.node_config[keys.PARTITION_ID]))
    dataset = load_scenario(config.scenario.value, config.data_path, config.partition_seed)
    return partition_id, dataset.institutions[partition_id]


def _generator(config: RunConfig, partition_id: int, server_round: int) -> torch.Generator:
    # One stream per (seed, institution, round): reproducible and independent across sites.
    return torch.Generator().manual_seed(
        config.seed * 1_000_003 + partition_id * 10_007 + server_round
    )


def make_client_app(config: RunConfig | None = None) -> ClientApp:
    """Build the ClientApp; ``config`` None means: parse it from Flower's run config."""
    app = ClientApp()

    def resolve(context: Context) -> RunConfig:
        return config if config is not None else parse_run_config(context.run_config)

    @app.train()
    def train_handler(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        cfg = resolve(context)
        partition_id, institution = _institution(cfg, context)
        server_round = server_round_of(msg.content)
        torch.manual_seed(cfg.seed)
        model = models.build(cfg.model, institution.x_train.shape[1])
        load_arrays(model, arrays_of(msg.content))
        outcome = train(
            model,
            institution.x_train,
            institution.y_train,
            cfg.training_plan,
            _generator(cfg, partition_id, server_round),
        )
        metrics = MetricRecord(
            {
                keys.NUM_EXAMPLES: institution.num_train,
                keys.PARTITION_ID: partition_id,
                keys.TRAIN_LOSS: outcome.mean_loss,
            }
        )
        content = RecordDict({keys.ARRAYS: model_to_arrays(model), keys.METRICS: metrics})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate_handler(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        cfg = resolve(context)
        partition_id, institution = _institution(cfg, context)
        model = models.build(cfg.model, institution.x_test.shape[1])
        load_arrays(model, arrays_of(msg.content))
        result = evaluate(model, institution.x_test, institution.y_test)
        metrics = MetricRecord(
            {keys.NUM_EXAMPLES: institution.num_test, keys.PARTITION_ID: partition_id, **result}
        )
        return Message(content=RecordDict({keys.METRICS: metrics}), reply_to=msg)

    return app


app = make_client_app()
