"""site.toml: parsing, path resolution, and errors that name the file and the field."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from countyfl.data.federated import CareLevel
from countyfl.deployment.site import (
    SiteConfigError,
    load_site,
    parse_site,
    render_site_toml,
    toml_string,
)
from countyfl.errors import ConfigError

VALID = """\
# Township 3's site: written by its IT staff
institution_id = "township-3"
name = "Township 3 health centre"
level = "township"

[data]
path = "exports/heart.csv"
schema = "heart-disease"

[data.columns]
cholesterol = "chol_mg_dl"
diagnosis = "outcome"

[privacy]
budget_epsilon = 8.0
delta = 0.001

[keys]
he_secret_context = "keys/institutions-secret.ckks"
node_private_key = "keys/township-3.key"
root_certificate = "/etc/countyfl/ca.pem"

[[approved_tasks]]
sha256 = "{sha}"
name = "diagnosis-logreg on fed-heart-disease"
approved_by = "li.wei"
approved_at = 2026-03-01T09:30:00Z
""".replace("{sha}", "ab" * 32)


def _write(folder: Path, text: str, name: str = "site.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_valid_site_toml_parses_with_paths_relative_to_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "township-3"
    path = _write(folder, VALID)
    # The node may be started from anywhere: paths still mean "beside the site.toml".
    monkeypatch.chdir(tmp_path)
    site = load_site(Path("township-3/site.toml"), require_data=False)

    assert site.institution_id == "township-3"
    assert site.level is CareLevel.TOWNSHIP
    assert site.data.data_schema == "heart-disease"
    assert site.data.path == Path("township-3/exports/heart.csv")
    assert site.data.path.resolve() == folder / "exports" / "heart.csv"
    assert site.keys.node_private_key == Path("township-3/keys/township-3.key")
    assert site.keys.root_certificate == Path("/etc/countyfl/ca.pem")  # absolute: kept
    assert site.state_dir.resolve() == folder / "site-state"
    assert site.ledger_path.parent == site.state_dir
    assert site.budget.epsilon == 8.0 and site.budget.delta == 0.001
    # Mapped fields take the export's names; the others keep UCI's.
    assert site.data.columns.cholesterol == "chol_mg_dl"
    assert site.data.columns.diagnosis == "outcome"
    assert site.data.columns.resting_bp == "trestbps"
    assert site.approved_hashes == {"ab" * 32}
    assert site.approved_tasks[0].approved_by == "li.wei"
    assert site.source == Path("township-3/site.toml")
    assert path.read_text(encoding="utf-8") == VALID  # loading never writes


def test_state_dir_default_follows_the_file_name_and_can_be_set(tmp_path: Path) -> None:
    other = _write(tmp_path, VALID, name="hungary.toml")
    assert load_site(other, require_data=False).state_dir == tmp_path / "hungary-state"
    custom = _write(tmp_path, 'state_dir = "/var/lib/countyfl"\n' + VALID)
    assert load_site(custom, require_data=False).state_dir == Path("/var/lib/countyfl")


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        (
            "budget_epsilon = 8.0",
            "budget_epsilon = -1.0",
            "privacy.budget_epsilon",
            "Input should be greater than 0",
        ),
        (
            "budget_epsilon = 8.0",
            'budget_epsilon = "plenty"',
            "privacy.budget_epsilon",
            "Input should be a valid number",
        ),
        ("delta = 0.001", "delta = 1.5", "privacy.delta", "Input should be less than 1"),
        (
            'level = "township"',
            'level = "city"',
            "level",
            "Input should be 'county', 'township' or 'village'",
        ),
        (
            'institution_id = "township-3"',
            'institution_id = "Township 3"',
            "institution_id",
            "must be a slug",
        ),
        ('level = "township"', 'level = "township"\ncolour = 3', "colour", "unknown field"),
        (
            'cholesterol = "chol_mg_dl"',
            'cholestrol = "chol_mg_dl"',
            "data.columns.cholestrol",
            "unknown field",
        ),
        (
            'schema = "heart-disease"',
            'schema = "framingham"',
            "data.schema",
            "Input should be 'heart-disease'",
        ),
        (
            'diagnosis = "outcome"',
            'diagnosis = "chol_mg_dl"',
            "data.columns",
            "both name column 'chol_mg_dl'",
        ),
        ('path = "exports/heart.csv"', "path = 3", "data.path", "Input is not a valid path"),
        (
            'sha256 = "' + "ab" * 32 + '"',
            'sha256 = "abc"',
            "approved_tasks[0].sha256",
            "String should match pattern",
        ),
        (
            'approved_by = "li.wei"\n',
            "",
            "approved_tasks[0].approved_by",
            "required field is missing",
        ),
    ],
)
def test_a_wrong_field_is_named_with_the_file(
    tmp_path: Path, old: str, new: str, field: str, message: str
) -> None:
    assert old in VALID
    path = _write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(SiteConfigError) as caught:
        load_site(path, require_data=False)
    lines = str(caught.value).splitlines()
    # One line per problem, each "FILE: FIELD: MESSAGE", then what to do.
    assert lines[:-1] == [line for line in lines[:-1] if line.startswith(f"{path}: {field}: ")]
    assert len(lines) == 2, lines
    assert message in lines[0]
    assert "countyfl node check --site" in lines[-1]
    assert isinstance(caught.value, ConfigError)


def test_missing_sections_are_named(tmp_path: Path) -> None:
    text = VALID.split("[privacy]")[0]
    with pytest.raises(SiteConfigError) as caught:
        load_site(_write(tmp_path, text), require_data=False)
    assert f"{tmp_path / 'site.toml'}: privacy: required field is missing" in str(caught.value)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, 'institution_id = "a"\nname = "b"\nlevel = county\n')
    with pytest.raises(SiteConfigError, match=r"site\.toml: not valid TOML: .*line 3"):
        load_site(path)


def test_missing_site_file_and_missing_export(tmp_path: Path) -> None:
    with pytest.raises(SiteConfigError, match=r"nowhere\.toml: site configuration not found"):
        load_site(tmp_path / "nowhere.toml")
    path = _write(tmp_path, VALID)
    with pytest.raises(SiteConfigError, match=r"site\.toml: data\.path: .*heart\.csv does not"):
        load_site(path)
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "heart.csv").write_text("age\n", encoding="utf-8")
    assert load_site(path).data.path == tmp_path / "exports" / "heart.csv"


def test_render_site_toml_round_trips_and_refuses_bad_values(tmp_path: Path) -> None:
    text = render_site_toml(
        institution_id="village-7",
        name='Village "7" clinic',
        level=CareLevel.VILLAGE,
        data_path="data/export.csv",
        budget_epsilon=4,
        delta=1e-5,
        columns={"age": "patient_age"},
        node_private_key="keys/village-7.key",
    )
    site = parse_site(tomllib.loads(text), source=tmp_path / "site.toml")
    assert site.name == 'Village "7" clinic'
    assert site.data.columns.age == "patient_age"
    assert site.privacy.delta == 1e-5
    assert site.keys.node_private_key == tmp_path / "keys" / "village-7.key"
    assert site.keys.he_secret_context is None
    with pytest.raises(SiteConfigError, match=r"privacy\.budget_epsilon"):
        render_site_toml(
            institution_id="v",
            name="v",
            level="village",
            data_path="x.csv",
            budget_epsilon=0,
            delta=1e-5,
        )


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_any_text_survives_the_toml_writer(text: str) -> None:
    assert tomllib.loads(f"value = {toml_string(text)}")["value"] == text
