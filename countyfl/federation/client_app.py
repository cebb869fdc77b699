"""The ClientApp each institution runs: local training and evaluation on its own split."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from countyfl import models, protocol, scenarios
from countyfl.data import InstitutionData
from countyfl.deployment.site import SiteConfig, load_site
from countyfl.deployment.site_data import load_site_data
from countyfl.deployment.tasks import TaskNotApprovedError, enforce_approval
from countyfl.errors import ConfigError, CountyflError
from countyfl.federation.fused import handle_fused
from countyfl.federation.records import arrays_of, load_arrays, model_to_arrays, server_round_of
from countyfl.federation.release_guard import release_guard
from countyfl.privacy.budget import BudgetExceededError, release_count, train_within_budget
from countyfl.privacy.calibration import encrypt_sums, release_calibration, reserved_entries
from countyfl.privacy.he.cache import DecryptionCache
from countyfl.privacy.he.codec import (
    MAX_ABS_WEIGHT,
    AverageStore,
    decrypt_average,
    encrypt_update,
)
from countyfl.privacy.he.keys import load_secret_context
from countyfl.privacy.he.wire import arrays_to_update, is_encrypted, update_to_arrays
from countyfl.privacy.ledger import LEDGER_FILE, Budget, PrivacyLedger
from countyfl.privacy.modes import CalibrationName, DpRandomness, Mechanism
from countyfl.privacy.noise_memo import NoiseMemo
from countyfl.privacy.randomness import round_generators
from countyfl.privacy.weighting import aggregation_weight
from countyfl.run_config import EncryptionName, RunConfig, parse_run_config
from countyfl.training.local import evaluate, get_weights, set_weights, train


@dataclass(frozen=True)
class Site:
    """Where a ClientApp runs: the institution's data, ledger, budget and secret key.

    Simulated institutions take all of it from the run config (partition-id in the node
    config); a deployed SuperNode from its own site.toml (site-config in the node config),
    so that the budget, the key and the data are the site's, never the submitter's.
    """

    partition_id: int
    institution: InstitutionData
    ledger_path: Path
    budget: Budget
    secret_context: str
    config_file: Path | None = None
    state_dir: Path | None = None

    def decryption_cache(self, run_id: int) -> DecryptionCache | None:
        """A deployed site's aggregates decrypted by any process of its node."""
        return DecryptionCache(self.state_dir, run_id) if self.state_dir is not None else None

    def noise_memo(self) -> NoiseMemo | None:
        """A deployed site's calibrated noise multipliers, shared by its node's processes."""
        return NoiseMemo(self.state_dir) if self.state_dir is not None else None


def deployed_partition_id(institution_id: str) -> int:
    """A stable record key for a deployed institution (node ids change per registration)."""
    return zlib.crc32(institution_id.encode()) & 0x7FFFFFFF


# site.toml path -> (its file state, the site, its data's key, the data). A node's
# template process loads them once for all its tasks (countyfl.federation.warm); a file
# that changed since (an approval appended to site.toml, a new export) is read again.
_SITES: dict[str, tuple[tuple[int, ...], SiteConfig, tuple[Any, ...], InstitutionData]] = {}


def _file_state(path: Path) -> tuple[int, ...]:
    try:
        info = path.stat()
    except OSError:
        return ()
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _deployed_site(path: str) -> tuple[SiteConfig, InstitutionData]:
    site_file = Path(path)
    state = _file_state(site_file)
    cached = _SITES.get(path)
    site = cached[1] if cached is not None and state and cached[0] == state else None
    if site is None:
        site = load_site(site_file)
    # A SQL export has no file to watch: its rows are read again for every task.
    files = [p for p in (site.data.path, getattr(site.data, "task", None)) if p is not None]
    states = tuple(_file_state(p) for p in files)
    data_key = (str(site.data.path), states, site.data.model_dump_json())
    if cached is not None and site.data.path is not None and all(states) and cached[2] == data_key:
        institution = cached[3]
    else:
        institution = load_site_data(site).institution
    _SITES[path] = (state, site, data_key, institution)
    return site, institution


def warm_site(path: str) -> None:
    """Load a deployed site's configuration and data now (a node's template process)."""
    _deployed_site(str(Path(path).resolve()))


def resolve_site(config: RunConfig, context: Context) -> Site:
    """The site this message is handled at (see :class:`Site`)."""
    site_file = context.node_config.get(protocol.SITE_CONFIG)
    if site_file:
        site, institution = _deployed_site(str(site_file))
        secret = site.keys.he_secret_context
        return Site(
            partition_id=deployed_partition_id(site.institution_id),
            institution=institution,
            ledger_path=Path(site.state_dir) / LEDGER_FILE,
            budget=Budget(site.privacy.budget_epsilon, site.privacy.delta),
            secret_context=str(secret) if secret else "",
            config_file=Path(str(site_file)),
            state_dir=Path(site.state_dir),
        )
    partition_id = int(str(context.node_config[protocol.PARTITION_ID]))
    dataset = scenarios.load(config.scenario, config.data_path, config.partition_seed)
    institution = dataset.institutions[partition_id]
    return Site(
        partition_id=partition_id,
        institution=institution,
        ledger_path=site_directory(config, institution.institution_id) / LEDGER_FILE,
        budget=Budget(config.budget_epsilon, config.delta),
        secret_context=config.he_secret_context,
    )


def site_policy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A deployed site runs only tasks whose manifest its site.toml approves.

    The manifest is derived from the run config the message belongs to, so a server cannot
    pair an approved manifest with another config. A refusal is an error reply naming the
    task, and is recorded in the site's refusals.jsonl.
    """
    site_file = context.node_config.get(protocol.SITE_CONFIG)
    if not site_file:
        return call_next(msg, context)
    try:
        site, _ = _deployed_site(str(site_file))
        config = parse_run_config(context.run_config)
        if config.dp and config.dp_randomness is not DpRandomness.SECRET:
            raise ConfigError(
                f"institution {site.institution_id} refuses a task whose DP randomness is "
                f"{config.dp_randomness.value!r}: its noise would follow the run's seed, which "
                "the server knows; a deployed site draws its noise from its own secret source"
            )
        enforce_approval(site, config, run_id=context.run_id)
    except TaskNotApprovedError as refusal:  # recorded in the site's refusals.jsonl
        return Message(
            error=Error(code=protocol.REFUSED_ERROR_CODE, reason=str(refusal)), reply_to=msg
        )
    except CountyflError as error:
        # A broken site.toml or data export: refuse with the reason rather than crash.
        return Message(
            error=Error(code=protocol.REFUSED_ERROR_CODE, reason=str(error)), reply_to=msg
        )
    return call_next(msg, context)


def _round_seed(config: RunConfig, partition_id: int, server_round: int) -> int:
    # Batches of training WITHOUT DP: one stream per (seed, institution, round). Nothing
    # private draws from it; DP mechanisms draw from countyfl.privacy.randomness.
    return config.seed * 1_000_003 + partition_id * 10_007 + server_round


SITES_DIR = "sites"


def site_directory(config: RunConfig, institution_id: str) -> Path:
    """The simulated institution's own folder (its privacy ledger lives there).

    ``sites-dir`` of the run config, else ``sites/`` under countyfl's home
    (``COUNTYFL_HOME``, default ``~/.countyfl``).
    """
    if config.sites_dir:
        return Path(config.sites_dir) / institution_id
    from countyfl.settings import Settings

    return Settings().home / SITES_DIR / institution_id


@lru_cache(maxsize=4)
def _secret_context(path: str) -> Any:
    # TenSEAL contexts cannot be pickled: each process loads its own, once.
    return load_secret_context(Path(path))


def receive_model(
    model: torch.nn.Module,
    content: RecordDict,
    config: RunConfig,
    secret_context: str = "",
    store: AverageStore | None = None,
) -> None:
    """Load the global model a task carries: plaintext, or Enc(sum n w) decrypted here.

    ``secret_context`` is the site's key file (default: the run config's, in simulation);
    ``store`` the site's decryption cache (deployment: one decryption per round and site).
    """
    arrays = arrays_of(content)
    if not is_encrypted(arrays):
        load_arrays(model, arrays)
        return
    if config.encryption is not EncryptionName.CKKS:
        raise ConfigError("the task carries an encrypted model but this run has no CKKS keys")
    shapes = [tuple(t.shape) for t in model.state_dict().values()]
    update = arrays_to_update(arrays)
    if update.contributors < config.min_contributors:
        # The county node never sends one (it discards such aggregates); a site that
        # approved the minimum does not decrypt one either.
        raise ConfigError(
            f"refusing to decrypt an aggregate of {update.contributors} institution(s): the "
            f"task's minimum is {config.min_contributors} contributors"
        )
    secret = _secret_context(_secret_path(config, secret_context))
    set_weights(model, decrypt_average(update, secret, shapes, store))


def _secret_path(config: RunConfig, secret_context: str) -> str:
    path = secret_context or config.he_secret_context
    if not path:
        raise ConfigError(
            "this run uses CKKS but the institution has no secret context: set "
            "keys.he_secret_context in site.toml (deployment) or he-secret-context (simulation)"
        )
    return path


def send_model(
    model: torch.nn.Module, num_examples: int, config: RunConfig, secret_context: str = ""
) -> ArrayRecord:
    """The local model as it leaves the institution: plaintext, or Enc(n w)."""
    if config.encryption is EncryptionName.CKKS:
        secret = _secret_context(_secret_path(config, secret_context))
        return update_to_arrays(
            encrypt_update(get_weights(model), num_examples, secret, max_abs_weight=MAX_ABS_WEIGHT)
        )
    return model_to_arrays(model)


def _empty_model(config: RunConfig, num_features: int) -> torch.nn.Module:
    """The model to load the received weights into.

    Its initial weights are overwritten at once; they are drawn with torch's global
    generator restored afterwards, so that a ClientApp leaves that shared state as it found
    it (the DP mechanisms never draw from it: see countyfl.privacy.randomness).
    """
    with torch.random.fork_rng(devices=[]):
        return models.build(config.model, num_features)


def _site_record(institution: InstitutionData) -> ConfigRecord:
    record = ConfigRecord({protocol.INSTITUTION_ID: institution.institution_id})
    if institution.township:
        record[protocol.TOWNSHIP] = institution.township
    return record


def _calibration_sums(
    cfg: RunConfig, site: Site, model: torch.nn.Module, context: Context, msg: Message
) -> tuple[dict[str, float], ArrayRecord | None]:
    """The final model's calibration sums over the site's training rows, paid for in its
    ledger (:mod:`countyfl.privacy.calibration`); none if its budget cannot pay for them.

    Under distributed noise the sums carry a share of the noise and go encrypted (the
    ArrayRecord); only the metrics' row count, released already, is in plaintext."""
    institution = site.institution
    server_round = server_round_of(msg.content)
    generators = round_generators(
        cfg.dp_randomness,
        seed=cfg.seed,
        institution=institution.institution_id,
        server_round=server_round,
    )
    ledger = PrivacyLedger(site.ledger_path)
    run_id = str(context.run_id)
    try:
        rows = release_count(  # the run's count: released already if the site trained
            institution_id=institution.institution_id,
            ledger=ledger,
            budget=site.budget,
            run_id=run_id,
            server_round=server_round,
            num_rows=institution.num_train,
            count_noise=cfg.count_noise,
            accountant=cfg.accountant,
            generator=generators(Mechanism.NOISY_COUNT),
        )
        release = release_calibration(
            institution_id=institution.institution_id,
            ledger=ledger,
            budget=site.budget,
            run_id=run_id,
            server_round=server_round,
            model=model,
            x=institution.x_train,
            y=institution.y_train,
            rows=rows,
            noise=cfg.calibration_noise,
            accountant=cfg.accountant,
            generator=generators(Mechanism.CALIBRATION),
            noise_shares=cfg.dp_noise_shares,
        )
    except BudgetExceededError:
        # Recorded in the ledger; the evaluation still goes back, without the sums.
        return {}, None
    released = {
        protocol.CALIBRATION_ROWS: release.sums.rows,
        # The run's whole spend, the sums included (the training replies' stops before them)
        protocol.EPSILON: release.epsilon_after,
    }
    if cfg.dp_noise_shares > 1:
        secret = _secret_context(_secret_path(cfg, site.secret_context))
        ciphertext = encrypt_sums(secret, release.sums)
        return released, ArrayRecord({protocol.CIPHERTEXT: Array(ciphertext)})
    return {
        protocol.CALIBRATION_POSITIVES: release.sums.positives,
        protocol.CALIBRATION_RISK: release.sums.risk,
        protocol.CALIBRATION_SPREAD: release.sums.spread,
        **released,
    }, None


def make_client_app(config: RunConfig | None = None) -> ClientApp:
    """Build the ClientApp; ``config`` None means: parse it from Flower's run config."""
    # The release guard is outermost: it sees every reply, refusals included.
    app = ClientApp(mods=[release_guard(config), site_policy_mod])

    def resolve(context: Context) -> RunConfig:
        return config if config is not None else parse_run_config(context.run_config)

    @app.train()
    def train_handler(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        cfg = resolve(context)
        site = resolve_site(cfg, context)
        partition_id, institution = site.partition_id, site.institution
        server_round = server_round_of(msg.content)
        model = _empty_model(cfg, institution.x_train.shape[1])
        cache = site.decryption_cache(context.run_id)
        receive_model(model, msg.content, cfg, site.secret_context, cache)
        values: dict[str, Any] = {protocol.PARTITION_ID: partition_id}
        if cfg.dp:
            try:
                spend = train_within_budget(
                    institution_id=institution.institution_id,
                    ledger=PrivacyLedger(site.ledger_path),
                    budget=site.budget,
                    run_id=str(context.run_id),
                    server_round=server_round,
                    model=model,
                    x=institution.x_train,
                    y=institution.y_train,
                    plan=cfg.training_plan,
                    target_epsilon=cfg.target_epsilon,
                    steps_per_run=cfg.dp_steps_per_run,
                    max_grad_norm=cfg.max_grad_norm,
                    accountant=cfg.accountant,
                    grad_sample_mode=cfg.grad_sample_mode,
                    count_noise=cfg.count_noise,
                    generators=round_generators(
                        cfg.dp_randomness,
                        seed=cfg.seed,
                        institution=institution.institution_id,
                        server_round=server_round,
                    ),
                    noise_memo=site.noise_memo(),
                    steps_policy=cfg.local_steps_policy,
                    reserved=reserved_entries(
                        cfg.count_noise, cfg.calibration, cfg.calibration_noise
                    ),
                    sample_rate=cfg.dp_sample_rate or None,
                    noise_shares=cfg.dp_noise_shares,
                    # Distributed noise: every site calibrates the same sigma, the run's.
                    calibration_delta=cfg.delta if cfg.dp_noise_shares > 1 else None,
                )
            except BudgetExceededError as refusal:
                # A refusal is a reply, not a crash: the server records it and goes on.
                return Message(
                    error=Error(code=protocol.REFUSED_ERROR_CODE, reason=str(refusal)),
                    reply_to=msg,
                )
            # The FedAvg weight is the run's noisy count, paid for in the ledger; the exact
            # number of rows and the training loss never leave the site.
            num_examples = spend.num_examples
            # Post-processing of the noisy count and public settings (module docstring of
            # countyfl.privacy.weighting): the noise and rate are calibrated from the count.
            weight = aggregation_weight(
                cfg.aggregation_weight,
                num_examples,
                spend.noise_multiplier,
                spend.outcome.sample_rate,
                spend.local_steps,
                sum(int(t.numel()) for t in model.state_dict().values()),
            )
            values |= {
                protocol.EPSILON: spend.epsilon_after,
                protocol.BUDGET_EPSILON: site.budget.epsilon,
                protocol.DELTA: cfg.delta,
                protocol.NOISE_MULTIPLIER: spend.noise_multiplier,
                protocol.SAMPLE_RATE: spend.outcome.sample_rate,
            }
        else:
            train(
                model,
                institution.x_train,
                institution.y_train,
                cfg.training_plan,
                torch.Generator().manual_seed(_round_seed(cfg, partition_id, server_round)),
            )
            num_examples = weight = institution.num_train
        values[protocol.NUM_EXAMPLES] = num_examples
        values[protocol.AGGREGATION_WEIGHT] = weight
        content = RecordDict(
            {
                protocol.ARRAYS: send_model(model, weight, cfg, site.secret_context),
                protocol.METRICS: MetricRecord(values),
                protocol.SITE: _site_record(institution),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate_handler(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        cfg = resolve(context)
        site = resolve_site(cfg, context)
        partition_id, institution = site.partition_id, site.institution
        model = _empty_model(cfg, institution.x_test.shape[1])
        cache = site.decryption_cache(context.run_id)
        receive_model(model, msg.content, cfg, site.secret_context, cache)
        result = evaluate(model, institution.x_test, institution.y_test)
        last_round = server_round_of(msg.content) >= cfg.num_server_rounds
        if cache is not None and last_round:
            cache.clear_run()  # the run's last message: its decrypted models go
        metrics = MetricRecord(
            {
                protocol.NUM_EXAMPLES: institution.num_test,
                protocol.PARTITION_ID: partition_id,
                **result,
            }
        )
        content = RecordDict({protocol.METRICS: metrics, protocol.SITE: _site_record(institution)})
        if last_round and cfg.dp and cfg.calibration is not CalibrationName.NONE:
            released, encrypted = _calibration_sums(cfg, site, model, context, msg)
            metrics.update(released)
            if encrypted is not None:
                content[protocol.CALIBRATION_SUMS] = encrypted
        return Message(content=content, reply_to=msg)

    @app.train("fused")
    def fused_handler(msg: Message, context: Context) -> Message:
        # A round's evaluation and the next round's training in one message: each part
        # goes through this app (its release guard and site policy) as if it came alone.
        return handle_fused(msg, context, app)

    return app


app = make_client_app()
