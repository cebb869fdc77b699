"""Referral rules and directory files: packaged defaults load; mistakes name file, entry, field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from countyfl.serving.errors import ReferralConfigError
from countyfl.serving.referral import load_directory, load_rules
from countyfl.serving.referral.config import (
    DEFAULT_DIRECTORY_FILE,
    DEFAULT_RULES_FILE,
    default_path,
)


def edited(tmp_path: Path, name: str, old: str, new: str) -> Path:
    text = default_path(name).read_text(encoding="utf-8")
    assert old in text, f"the packaged {name} no longer contains {old!r}"
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_packaged_defaults_load() -> None:
    rules = load_rules()
    directory = load_directory()
    assert "chest-pain" in rules.symptom_codes
    skills = {skill for doctor in directory.doctors for skill in doctor.skills}
    wanted = {rule.specialty for rule in rules.symptoms} | {
        p.preferred_specialty
        for p in (
            rules.populations.pregnant,
            rules.populations.young_child,
            rules.populations.elderly,
        )
    }
    assert wanted <= skills, f"no doctor in the packaged directory for {wanted - skills}"


def test_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ReferralConfigError, match="COUNTYFL_REFERRAL_RULES_FILE"):
        load_rules(tmp_path / "nope.toml")


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[escalation\n", encoding="utf-8")
    with pytest.raises(ReferralConfigError, match=re.escape(str(path)) + ": not valid TOML"):
        load_rules(path)


def test_bad_symptom_level_names_entry_code_and_field(tmp_path: Path) -> None:
    path = edited(
        tmp_path,
        DEFAULT_RULES_FILE,
        'levels = { mild = "village", moderate = "township", severe = "county" }',
        'levels = { mild = "village", moderate = "township", severe = "hospital" }',
    )
    with pytest.raises(ReferralConfigError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: [[symptoms]] entry 3 (code 'palpitations')")
    assert "field 'levels.severe'" in message
    assert "'county', 'township' or 'village'" in message


def test_falling_levels_are_refused(tmp_path: Path) -> None:
    path = edited(
        tmp_path,
        DEFAULT_RULES_FILE,
        'levels = { mild = "village", moderate = "township", severe = "county" }',
        'levels = { mild = "county", moderate = "township", severe = "county" }',
    )
    with pytest.raises(
        ReferralConfigError, match=r"entry 3 \(code 'palpitations'\).*must not fall"
    ):
        load_rules(path)


def test_unordered_risk_bands_name_the_model(tmp_path: Path) -> None:
    path = edited(
        tmp_path,
        DEFAULT_RULES_FILE,
        "bands = { moderate = 0.10, high = 0.20 }",
        "bands = { moderate = 0.5, high = 0.20 }",
    )
    with pytest.raises(ReferralConfigError, match=r"field 'models.coronary-risk-10y.bands'.*below"):
        load_rules(path)


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    path = edited(
        tmp_path,
        DEFAULT_RULES_FILE,
        'urgency-steps = 1\npreferred-specialty = "obstetrics"',
        'urgency-step = 1\npreferred-specialty = "obstetrics"',
    )
    with pytest.raises(
        ReferralConfigError, match=r"field 'populations.pregnant.urgency-step'.*Extra inputs"
    ):
        load_rules(path)


def test_duplicate_symptom_code_is_refused(tmp_path: Path) -> None:
    path = edited(tmp_path, DEFAULT_RULES_FILE, 'code = "headache"', 'code = "fever"')
    with pytest.raises(ReferralConfigError, match="repeats the code 'fever'"):
        load_rules(path)


def test_negative_load_names_the_doctor(tmp_path: Path) -> None:
    path = edited(tmp_path, DEFAULT_DIRECTORY_FILE, "current-load = 9\n", "current-load = -1\n")
    with pytest.raises(ReferralConfigError) as caught:
        load_directory(path)
    assert "[[doctors]] entry 2 (id 'dr-li-na'), field 'current-load'" in str(caught.value)
    assert "greater than or equal to 0" in str(caught.value)


def test_unknown_institution_names_the_doctor(tmp_path: Path) -> None:
    path = edited(
        tmp_path, DEFAULT_DIRECTORY_FILE, 'institution = "village-2"', 'institution = "village-9"'
    )
    with pytest.raises(
        ReferralConfigError,
        match=r"\[\[doctors\]\] entry 13 \(id 'dr-ma-jun'\), field 'institution': 'village-9'",
    ):
        load_directory(path)
