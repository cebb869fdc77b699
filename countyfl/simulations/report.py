"""The report folder of a simulation: metrics.json, report.md and PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from countyfl import __version__, protocol
from countyfl.data import InstitutionData
from countyfl.privacy.modes import CalibrationName
from countyfl.privacy.weighting import local_steps_for
from countyfl.run_config import RunConfig
from countyfl.simulations import plots
from countyfl.simulations.baselines import POOLED_TEST, mean_of_institutions
from countyfl.simulations.runner import QUARANTINE_FILE, SimulationResult

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
ROUNDS_PLOT = "institution-metric-per-round.png"
METHODS_PLOT = "federated-vs-baselines.png"
CALIBRATION_PLOT = "calibration.png"
PRIVACY_PLOT = "privacy-budget.png"


def _clean(value: Any) -> Any:
    """Make a structure JSON-safe: NaN becomes None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _stats(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "min": float(finite.min()),
        "max": float(finite.max()),
    }


def summarize(result: SimulationResult) -> dict[str, Any]:
    """Build the content of metrics.json from a simulation result."""
    dataset = result.dataset
    ids = [i.institution_id for i in dataset.institutions]
    method_names = list(result.seeds[0].methods)
    methods: dict[str, Any] = {}
    for method in method_names:
        per_seed: dict[str, dict[str, Any]] = {}
        for seed_result in result.seeds:
            metrics = seed_result.methods[method]
            per_seed[str(seed_result.seed)] = {
                "per-institution": {i: metrics[i] for i in ids},
                "mean-of-institutions": mean_of_institutions(metrics, ids),
                POOLED_TEST: metrics[POOLED_TEST],
            }
        metric_names = list(next(iter(per_seed.values()))["mean-of-institutions"])
        methods[method] = {
            "per-seed": per_seed,
            "summary": {
                "mean-of-institutions": {
                    m: _stats([s["mean-of-institutions"][m] for s in per_seed.values()])
                    for m in metric_names
                },
                POOLED_TEST: {
                    m: _stats([s[POOLED_TEST][m] for s in per_seed.values()]) for m in metric_names
                },
            },
        }
    rounds = {
        str(s.seed): {
            str(number): {
                "evaluate": {ids[p]: v for p, v in record.evaluate.items()},
                "train": {ids[p]: v for p, v in record.train.items()},
                "failures": record.failures,
            }
            for number, record in sorted(s.history.rounds.items())
        }
        for s in result.seeds
    }
    privacy = _privacy_summary(result, ids)
    by_level = _by_group(result, methods, privacy, lambda i: i.level.value)
    by_township = (
        _by_group(result, methods, privacy, lambda i: i.township)
        if any(i.township for i in dataset.institutions)
        else {}
    )
    scenario = result.scenario
    config = result.config.to_run_config()
    config.pop("seed")
    config.pop("output-dir")
    summary: dict[str, Any] = _clean(
        {
            "scenario": scenario.name,
            "description": scenario.description,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "countyfl-version": __version__,
            "seeds": [s.seed for s in result.seeds],
            "config": config,
            "headline-metric": scenario.headline_metric,
            "data": {
                "rows-read": dataset.rows_read,
                "quarantined-rows": dataset.quarantined_row_count,
                "quarantine-entries": len(dataset.quarantined),
                "quarantine-file": QUARANTINE_FILE,
                "notes": list(dataset.notes),
                "institutions": [
                    {
                        "id": i.institution_id,
                        "name": i.name,
                        "level": i.level.value,
                        "train-rows": i.num_train,
                        "test-rows": i.num_test,
                        "train-positive-rate": float(i.y_train.mean()) if i.num_train else None,
                    }
                    for i in dataset.institutions
                ],
            },
            "methods": methods,
            "by-level": by_level,
            "by-township": by_township,
            "privacy": privacy,
            # Per seed: the intercept shift the federated model was published with
            "calibration": {
                str(s.seed): s.calibration.model_dump(mode="json", by_alias=True)
                for s in result.seeds
                if s.calibration is not None
            },
            "rounds": rounds,
            "wall-seconds-per-seed": {str(s.seed): s.wall_seconds for s in result.seeds},
            "reference": {"source": scenario.reference_source, "values": scenario.reference},
        }
    )
    return summary


def _by_group(
    result: SimulationResult,
    methods: dict[str, Any],
    privacy: dict[str, Any],
    group_of: Callable[[InstitutionData], str],
) -> dict[str, Any]:
    """Per group (a level: county, township, village; or a township): institutions, rows, the
    headline metric of the
    federated and pooled models and of each institution's own local-only model on its own
    test rows (mean over the level's institutions, then mean ± std over seeds), the mean
    noise multiplier, and the share of the aggregation weight the level's updates had in
    the last round (each site's ``aggregation-weight``; training rows where none was sent).
    """
    metric = result.scenario.headline_metric
    levels: dict[str, list[Any]] = {}
    for institution in result.dataset.institutions:
        levels.setdefault(group_of(institution), []).append(institution)
    per_institution = privacy["per-institution"]

    def weight_of(institution: InstitutionData) -> float:
        sent = per_institution[institution.institution_id]["aggregation-weight"]
        return float(sent) if sent is not None else float(institution.num_train)

    total_weight = sum(weight_of(i) for i in result.dataset.institutions) or 1.0
    summary: dict[str, Any] = {}
    for level, members in levels.items():
        ids = [i.institution_id for i in members]

        def level_mean(method: str, ids: list[str] = ids) -> dict[str, float]:
            per_seed = methods.get(method, {}).get("per-seed", {})
            return _stats(
                [
                    float(np.nanmean([s["per-institution"][i][metric] for i in ids]))
                    for s in per_seed.values()
                ]
            )

        own = [
            float(
                np.nanmean(
                    [
                        methods[f"local-{i}"]["per-seed"][seed]["per-institution"][i][metric]
                        for i in ids
                        if f"local-{i}" in methods
                    ]
                )
            )
            for seed in methods.get("federated", {}).get("per-seed", {})
            if any(f"local-{i}" in methods for i in ids)
        ]
        noises = [
            privacy["per-institution"][i]["noise-multiplier"]
            for i in ids
            if privacy["per-institution"][i]["noise-multiplier"] is not None
        ]
        summary[level] = {
            "institutions": len(members),
            "train-rows": sum(i.num_train for i in members),
            "weight-share": sum(weight_of(i) for i in members) / total_weight,
            "federated": level_mean("federated"),
            "pooled": level_mean("pooled"),
            "local-only-own": _stats(own),
            "noise-multiplier": _stats(noises),
            "dp-steps-per-round": _stats(
                [
                    float(per_institution[i]["dp-steps-per-round"])
                    for i in ids
                    if per_institution[i]["dp-steps-per-round"] is not None
                ]
            ),
        }
    return summary


def _privacy_summary(result: SimulationResult, ids: list[str]) -> dict[str, Any]:
    """Per institution: noise, final epsilon, refusals; membership-inference AUCs."""
    config = result.config
    per_institution: dict[str, Any] = {}
    for partition, institution_id in enumerate(ids):
        finals, noises, rates, weights, counts, refusals = [], [], [], [], [], 0
        for seed_result in result.seeds:
            trained_rounds = [
                record.train[partition]
                for _, record in sorted(seed_result.history.rounds.items())
                if partition in record.train
            ]
            if trained_rounds and protocol.AGGREGATION_WEIGHT in trained_rounds[-1]:
                weights.append(trained_rounds[-1][protocol.AGGREGATION_WEIGHT])
            rounds = seed_result.history.rounds
            last = rounds[max(rounds)].evaluate if rounds else {}
            calibrated = last.get(partition, {}).get(protocol.EPSILON)
            if trained_rounds and protocol.EPSILON in trained_rounds[-1]:
                counts.append(int(trained_rounds[-1][protocol.NUM_EXAMPLES]))
                # A calibrated run's last evaluation reports the spend after its sums.
                finals.append(
                    calibrated if calibrated is not None else trained_rounds[-1][protocol.EPSILON]
                )
                noises.append(trained_rounds[-1][protocol.NOISE_MULTIPLIER])
                rates.append(trained_rounds[-1][protocol.SAMPLE_RATE])
            refusals += sum(
                f"institution {institution_id} refuses" in failure
                for record in seed_result.history.rounds.values()
                for failure in record.failures
            )
        per_institution[institution_id] = {
            "noise-multiplier": float(np.mean(noises)) if noises else None,
            # The weight its update had in the last round it trained (mean over seeds)
            "aggregation-weight": float(np.mean(weights)) if weights else None,
            # DP-SGD steps per round (the task's, or fewer at a small site under the
            # epoch policy), from its noisy count (first seed's)
            "dp-steps-per-round": _steps_per_round(config, counts),
            "budget-split": _budget_split(config, noises, rates, counts),
            "epsilon-after-run": _stats(finals),
            "refused-rounds": refusals,
            "membership-inference-auc": _stats(
                [s.membership_inference.get(institution_id, float("nan")) for s in result.seeds]
            ),
        }
    return {
        "enabled": config.dp,
        "randomness": config.dp_randomness.value if config.dp else None,
        "count-noise": config.count_noise if config.dp else None,
        "calibration-noise": (
            config.calibration_noise
            if config.dp and config.calibration is not CalibrationName.NONE
            else None
        ),
        "target-epsilon-per-run": config.target_epsilon if config.dp else None,
        "delta": config.delta if config.dp else None,
        "budget-epsilon": config.budget_epsilon if config.dp else None,
        "accountant": config.accountant.value if config.dp else None,
        "max-grad-norm": config.max_grad_norm if config.dp else None,
        "noise": config.dp_noise.value if config.dp else None,
        "noise-shares": config.dp_noise_shares if config.dp else None,
        "per-institution": per_institution,
        "membership-inference-auc-mean": _stats(
            [float(np.nanmean(list(s.membership_inference.values()))) for s in result.seeds]
        ),
    }


def _steps_per_round(config: RunConfig, counts: list[int]) -> int | None:
    if not config.dp or not counts:
        return None
    return local_steps_for(
        config.local_steps_policy, config.local_steps, counts[0], config.batch_size
    )


def _budget_split(
    config: RunConfig, noises: list[float], rates: list[float], counts: list[int]
) -> dict[str, float] | None:
    """How one run's epsilon splits between the noisy count and DP-SGD (first seed's noise).

    Each mechanism alone, and both composed (the run's total, which the calibration puts
    at the target). Epsilons do not add: composition is tighter than the sum.
    """
    if not config.dp or not noises:
        return None
    from countyfl.privacy.accounting import epsilon_of
    from countyfl.privacy.calibration import reserved_entries

    reserved = reserved_entries(config.count_noise, config.calibration, config.calibration_noise)
    steps = _steps_per_round(config, counts) or config.local_steps
    training = (noises[0], rates[0], steps * config.num_server_rounds)
    split = {
        "noisy-count": epsilon_of([reserved[0]], config.delta, config.accountant),
        "training": epsilon_of([training], config.delta, config.accountant),
    }
    if len(reserved) > 1:
        split["calibration"] = epsilon_of([reserved[1]], config.delta, config.accountant)
    split["run"] = epsilon_of([*reserved, training], config.delta, config.accountant)
    return split


def _fmt(value: float | None, spread: float | None = None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if spread is None or not math.isfinite(spread):
        return f"{value:.3f}"
    return f"{value:.3f} ± {spread:.3f}"


def render_markdown(summary: dict[str, Any]) -> str:
    """report.md: what ran, the data, the headline table, per-institution results, plots."""
    metric = summary["headline-metric"]
    data = summary["data"]
    methods = summary["methods"]
    reference = summary["reference"]["values"]
    seeds = summary["seeds"]
    lines = [
        f"# countyfl simulation report: {summary['scenario']}",
        "",
        f"{summary['description']}. Seeds {', '.join(map(str, seeds))}; "
        f"created {summary['created']} by countyfl {summary['countyfl-version']}.",
        "",
        "## Run configuration",
        "",
        "| key | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in summary["config"].items()],
        "",
        "## Data",
        "",
        f"{data['rows-read']} rows read; {data['quarantined-rows']} rows quarantined "
        f"({data['quarantine-entries']} problems, listed with row, field and reason in "
        f"`{data['quarantine-file']}`).",
        "",
        *[f"- {note}" for note in data["notes"]],
        "",
        "| institution | level | train rows | test rows | train positive rate |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {i['name']} | {i['level']} | {i['train-rows']} | {i['test-rows']} | "
            f"{_fmt(i['train-positive-rate'])} |"
            for i in data["institutions"]
        ],
        "",
        f"## Results: {metric}, mean of institution tests (mean ± std over seeds)",
        "",
    ]
    headline_columns = [protocol.ACCURACY, protocol.AUC, protocol.BRIER, protocol.ECE]
    header = "| method | " + " | ".join(f"{c} (mean of institutions)" for c in headline_columns)
    header += f" | {metric} (pooled test) |"
    if reference:
        header += " published |"
    lines += [header, "| --- " * (len(headline_columns) + 2 + (1 if reference else 0)) + "|"]
    for name, method in methods.items():
        means = method["summary"]["mean-of-institutions"]
        pooled = method["summary"][POOLED_TEST][metric]
        row = f"| {name} | " + " | ".join(
            _fmt(means[c]["mean"], means[c]["std"]) for c in headline_columns
        )
        row += f" | {_fmt(pooled['mean'], pooled['std'])} |"
        if reference:
            published = reference.get(
                name, reference.get("fedavg") if name == "federated" else None
            )
            row += f" {_fmt(published)} |"
        lines.append(row)
    if reference:
        lines += [
            "",
            f"Published: {summary['reference']['source']}. For `federated` the published "
            "column shows FLamby's FedAvg; other published strategies: "
            + ", ".join(f"{k} {v:.3f}" for k, v in reference.items() if k.startswith("fed"))
            + ".",
        ]
    lines += [
        "",
        "## Federated model per institution (final round, mean ± std over seeds)",
        "",
        "| institution | " + " | ".join(headline_columns) + " |",
        "| --- " * (len(headline_columns) + 1) + "|",
    ]
    federated = methods["federated"]["per-seed"]
    for institution in data["institutions"]:
        values = [
            [seed_data["per-institution"][institution["id"]][c] for seed_data in federated.values()]
            for c in headline_columns
        ]
        cells = []
        for column in values:
            stats = _stats([v if v is not None else float("nan") for v in column])
            cells.append(_fmt(stats["mean"], stats["std"]))
        lines.append(f"| {institution['name']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## By level: {metric} on each institution's own test rows (mean of the level's "
        "institutions; mean ± std over seeds)",
        "",
        "| level | institutions | train rows | weight share (last round) | federated | pooled | "
        "local-only (own model) | noise multiplier (mean ± std over institutions) | "
        "DP steps a round |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for level, entry in summary["by-level"].items():
        lines.append(
            f"| {level} | {entry['institutions']} | {entry['train-rows']} | "
            f"{entry['weight-share']:.2f} | "
            + " | ".join(
                _fmt(entry[k]["mean"], entry[k]["std"])
                for k in (
                    "federated",
                    "pooled",
                    "local-only-own",
                    "noise-multiplier",
                    "dp-steps-per-round",
                )
            )
            + " |"
        )
    if summary.get("by-township"):
        lines += [
            "",
            f"## By township: {metric} (the township's centre and village clinics; the county "
            "hospital as county-seat)",
            "",
            "| township | institutions | train rows | federated | pooled | "
            "local-only (own model) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for township, entry in summary["by-township"].items():
            lines.append(
                f"| {township} | {entry['institutions']} | {entry['train-rows']} | "
                + " | ".join(
                    _fmt(entry[k]["mean"], entry[k]["std"])
                    for k in ("federated", "pooled", "local-only-own")
                )
                + " |"
            )
    privacy = summary["privacy"]
    lines += ["", "## Privacy", ""]
    if privacy["enabled"]:
        lines += [
            f"Record-level differential privacy at every institution: target epsilon "
            f"{privacy['target-epsilon-per-run']:g} per run at delta {privacy['delta']:g}, "
            f"for everything the run releases: the institution's example count, released "
            f"once per run with Gaussian noise of {privacy['count-noise']:g} records, and "
            f"DP-SGD (Opacus; clipping norm {privacy['max-grad-norm']:g}) over every step "
            f"that ran, composed by the {privacy['accountant']} accountant; institution "
            f"budget epsilon {privacy['budget-epsilon']:g}. Each institution calibrates its "
            "own noise to the sampling rate its noisy count gives. The release inventory "
            "(docs/privacy.md) lists every field a site sends and what protects it.",
            "",
        ]
        if privacy.get("noise") == "distributed":
            lines += [
                f"**Distributed noise.** Every institution drew only a share (1 / "
                f"{privacy['noise-shares']} of the variance) of DP-SGD's noise; only the "
                f"encrypted sum of at least {privacy['noise-shares']} updates, which carries "
                "all of it, was decrypted, and the epsilons below are those of that sum. They "
                "assume the county server never let a key holder decrypt a smaller aggregate: "
                "one institution's update alone carries only its share (docs/privacy.md, "
                '"Distributed noise").',
                "",
            ]
        if privacy["randomness"] == "seeded":
            lines += [
                "**Reproducible noise: this run asked for `--dp-randomness seeded`.** Every "
                "DP draw followed the run's seed, so the privacy guarantee below does NOT "
                "hold against anyone who knows the seed (the server, or a reader of run.json): "
                "they can replay the noise. A deployed site refuses such a task.",
                "",
            ]
        else:
            lines += [
                "Every DP draw (Poisson sampling, Gaussian noise, the count's noise) came from "
                "a generator seeded per institution and round from the operating system's "
                "CSPRNG: no other party, the county server included, can predict or set it.",
                "",
            ]
    else:
        lines += ["Differential privacy was off for this run (`--no-dp`).", ""]
    calibrated = privacy.get("calibration-noise") is not None
    parts = "count / training / calibration / run" if calibrated else "count / training / run"
    lines += [
        f"| institution | noise multiplier | epsilon: {parts} | "
        "epsilon after the run | refused rounds | membership-inference AUC |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for institution in data["institutions"]:
        entry = privacy["per-institution"][institution["id"]]
        epsilon = entry["epsilon-after-run"]
        attack = entry["membership-inference-auc"]
        split = entry["budget-split"]
        shares = (
            " / ".join(
                f"{split[k]:.3f}"
                for k in ("noisy-count", "training", "calibration", "run")
                if k in split
            )
            if split
            else "n/a"
        )
        lines.append(
            f"| {institution['name']} | {_fmt(entry['noise-multiplier'])} | {shares} | "
            f"{_fmt(epsilon['mean'], epsilon['std'])} | {entry['refused-rounds']} | "
            f"{_fmt(attack['mean'], attack['std'])} |"
        )
    if privacy["enabled"]:
        lines += [
            "",
            "Epsilons of the count and of training alone"
            + (", of the calibration sums alone," if calibrated else "")
            + " and of all composed (the run's total): composition is tighter than their sum.",
        ]
    attack_mean = privacy["membership-inference-auc-mean"]
    lines += [
        "",
        "Membership inference: a loss-threshold attack (Yeom et al., CSF 2018) on each "
        "institution's training rows against its held-out rows, using the final global "
        "model; 0.5 means the attack cannot tell members from non-members. Mean over "
        f"institutions: {_fmt(attack_mean['mean'], attack_mean['std'])}. This audit reads "
        "every institution's rows, so it exists in simulations only; a deployed site never "
        "computes or sends it.",
    ]
    if privacy["enabled"]:
        lines += ["", f"![epsilon per round]({PRIVACY_PLOT})"]
    calibration = summary.get("calibration") or {}
    if calibration:
        shifts = ", ".join(
            f"seed {seed}: "
            + (
                f"{record['shift']:+.3f} from {record['contributors']} institutions"
                if not record["skipped"]
                else record["skipped"]
            )
            for seed, record in calibration.items()
        )
        lines += [
            "",
            "Intercept calibration: after the last round every site sent three noisy sums "
            "over its training rows (positives, predicted risk and its spread, paid for in its "
            "ledger), and the federated model's output bias was shifted so that its mean "
            "predicted risk meets the prevalence (one Newton step on the logit-odds) before it "
            f"was evaluated above ({shifts}).",
        ]
    failures = [
        f"seed {seed} round {number}: {message}"
        for seed, rounds in summary["rounds"].items()
        for number, record in rounds.items()
        for message in record["failures"]
    ]
    lines += ["", "## Failures", ""]
    lines += [f"- {f}" for f in failures] or ["None: every institution answered every round."]
    lines += [
        "",
        "## Plots",
        "",
        f"![per-institution {metric} per round]({ROUNDS_PLOT})",
        "",
        f"![federated against baselines]({METHODS_PLOT})",
    ]
    if summary["scenario"] == "framingham-county":
        lines += ["", f"![calibration]({CALIBRATION_PLOT})"]
    lines.append("")
    return "\n".join(lines)


def write_report(result: SimulationResult) -> Path:
    """Write metrics.json, report.md and the plots into the result's output folder."""
    output = result.output_dir
    output.mkdir(parents=True, exist_ok=True)
    summary = summarize(result)
    (output / METRICS_FILE).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    metric = result.scenario.headline_metric
    ids = [i.institution_id for i in result.dataset.institutions]
    names = {i.institution_id: i.name for i in result.dataset.institutions}
    round_numbers = sorted(result.seeds[0].history.rounds)
    per_institution = {
        names[i]: [
            [
                s.history.rounds[r].evaluate.get(p, {}).get(metric, float("nan"))
                for r in round_numbers
            ]
            for s in result.seeds
        ]
        for p, i in enumerate(ids)
    }
    plots.plot_rounds(
        output / ROUNDS_PLOT,
        round_numbers,
        per_institution,
        metric,
        f"{result.scenario.name}: federated model on each institution's test split",
    )
    # The federated model is drawn under its strategy's name, beside the published figure
    # of the same strategy.
    strategy = result.config.strategy.value
    method_summary = {
        (strategy if name == "federated" else name): method["summary"]["mean-of-institutions"][
            metric
        ]
        for name, method in summary["methods"].items()
    }
    method_summary = {
        k: {kk: (vv if vv is not None else float("nan")) for kk, vv in v.items()}
        for k, v in method_summary.items()
    }
    plots.plot_methods(
        output / METHODS_PLOT,
        method_summary,
        metric,
        result.scenario.reference,
        "FLamby (published)",
        f"{result.scenario.name}: federated vs baselines",
    )
    if result.config.dp:
        plots.plot_privacy(
            output / PRIVACY_PLOT,
            round_numbers,
            {
                names[i]: [
                    [
                        s.history.rounds[r].train.get(p, {}).get(protocol.EPSILON, float("nan"))
                        for r in round_numbers
                    ]
                    for s in result.seeds
                ]
                for p, i in enumerate(ids)
            },
            budget=result.config.budget_epsilon,
            target=result.config.target_epsilon,
        )
    if result.scenario.name == "framingham-county":
        _, _, _, y_test = result.dataset.pooled()
        curves = {
            name: (
                np.concatenate([s.pooled_test_predictions[name] for s in result.seeds]),
                np.tile(y_test, len(result.seeds)),
            )
            for name in result.seeds[0].pooled_test_predictions
        }
        plots.plot_calibration(
            output / CALIBRATION_PLOT, curves, "10-year CHD risk: calibration on all test rows"
        )
    (output / REPORT_FILE).write_text(render_markdown(summary), encoding="utf-8")
    return output / REPORT_FILE
