"""The chain's math as pure functions: canonical encoding, hashes and chain verification."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import hypothesis.strategies as st
import pytest
from hypothesis import assume, given, settings

from countyfl.audit import (
    GENESIS,
    GENESIS_HASH,
    AuditEntry,
    AuditEntryInvalidError,
    AuditWriteError,
    ChainHead,
    Outcome,
    ProblemKind,
    hash_entry,
    verify_chain,
)
from countyfl.audit.chain import (
    ENTRY_FIELDS,
    EntryRow,
    NewEntry,
    build_chain,
    canonical_details,
    encode_entry,
    format_time,
    parse_time,
    validate_new_entry,
)

# Text as stored: any Unicode without NUL and lone surrogates.
TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=12)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)
DETAILS = st.dictionaries(TEXT, JSON_VALUES, max_size=4)
ACTIONS = st.from_regex(r"[a-z][a-z0-9-]{0,8}(\.[a-z][a-z0-9-]{0,8}){0,2}", fullmatch=True)
TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@st.composite
def new_entries(draw: st.DrawFn) -> tuple[NewEntry, str]:
    entry = validate_new_entry(
        actor=draw(TEXT.filter(str.strip)),
        role=draw(TEXT.filter(str.strip)),
        action=draw(ACTIONS),
        target=draw(TEXT),
        outcome=draw(st.sampled_from(Outcome)).value,
        details=draw(DETAILS),
    )
    return entry, format_time(draw(TIMES))


CHAINS = st.lists(new_entries(), min_size=1, max_size=8).map(
    lambda entries: list(build_chain(entries))
)


def _head(rows: list[EntryRow]) -> ChainHead:
    return ChainHead(rows[-1][0], rows[-1][9]) if rows else GENESIS


def _entry(actor: str = "alice", **overrides: object) -> tuple[NewEntry, str]:
    fields: dict[str, object] = {
        "actor": actor,
        "role": "clinician",
        "action": "prediction",
        "target": "model:heart:v1",
        "outcome": "ok",
        "details": {"request": 1},
    }
    fields.update(overrides)
    return validate_new_entry(**fields), "2026-11-28T09:00:00.000001Z"  # type: ignore[arg-type]


def _chain(length: int) -> list[EntryRow]:
    return list(build_chain(_entry(actor=f"user-{n}") for n in range(length)))


# ------------------------------------------------------------------------------ encoding


def test_the_hash_is_sha256_of_the_documented_encoding() -> None:
    # An independent re-implementation from the module docstring, as a regulator would write it.
    fields = (7, "2026-11-28T09:15:02.000341Z", "dr-ölund", "clinician", "prediction", "m:v1")
    rest = ("ok", '{"a":1,"é":"ü"}', "ab" * 32)
    text = "\0".join(["countyfl-audit-v1", *(str(field) for field in fields), *rest])
    expected = hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert hash_entry(*fields, *rest) == expected
    assert encode_entry(*fields, *rest) == text.encode("utf-8")


@given(
    st.tuples(
        st.integers(1, 10**12),
        TIMES.map(format_time),
        *(TEXT for _ in range(6)),
        st.text("0123456789abcdef", min_size=64, max_size=64),
    )
)
def test_hash_entry_equals_sha256_of_encode_entry(fields: tuple[object, ...]) -> None:
    assert hash_entry(*fields) == hashlib.sha256(encode_entry(*fields)).hexdigest()  # type: ignore[arg-type]


@given(TEXT, TEXT, st.integers(0, 12))
def test_moving_a_field_boundary_changes_the_encoding(left: str, right: str, cut: int) -> None:
    """("ab", "c") and ("a", "bc") must never encode alike: fields cannot bleed into each other."""
    joined = left + right
    assume(cut <= len(joined) and cut != len(left))
    moved = (joined[:cut], joined[cut:])
    fixed = ("2026-11-28T09:00:00.000000Z", "ok", "{}", GENESIS_HASH)
    one = encode_entry(1, fixed[0], left, right, "login", "", *fixed[1:])
    two = encode_entry(1, fixed[0], *moved, "login", "", *fixed[1:])
    assert one != two


def test_a_nul_in_any_field_is_refused_by_the_encoding() -> None:
    with pytest.raises(ValueError, match="NUL"):
        hash_entry(1, "t", "a\0b", "r", "login", "", "ok", "{}", GENESIS_HASH)


@given(DETAILS)
def test_canonical_details_are_sorted_compact_and_idempotent(details: dict[str, object]) -> None:
    text = canonical_details(details)
    assert canonical_details(json.loads(text)) == text
    assert json.loads(text) == json.loads(json.dumps(details))


def test_canonical_details_keep_non_ascii_and_have_no_spaces() -> None:
    assert canonical_details({"b": [1, 2], "a": "ü"}) == '{"a":"ü","b":[1,2]}'
    assert canonical_details(None) == "{}"


@pytest.mark.parametrize(
    "details", [{"x": float("nan")}, {"x": object()}, {1: "a", "b": 2}, ["not", "a", "mapping"]]
)
def test_details_json_cannot_represent_are_refused(details: object) -> None:
    with pytest.raises(AuditEntryInvalidError, match="details"):
        canonical_details(details)  # type: ignore[arg-type]


def test_times_are_utc_with_microseconds_and_round_trip() -> None:
    moment = datetime(2026, 11, 28, 10, 15, 2, 341, tzinfo=timezone(timedelta(hours=1)))
    text = format_time(moment)
    assert text == "2026-11-28T09:15:02.000341Z"
    assert parse_time(text) == moment
    with pytest.raises(AuditEntryInvalidError, match="time zone"):
        format_time(datetime(2026, 11, 28))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("actor", "", "empty"),
        ("role", "  ", "empty"),
        ("action", "Model Promote", "kebab-case"),
        ("action", "model.", "kebab-case"),
        ("outcome", "maybe", "'ok', 'refused', 'failed'"),
        ("target", "a\0b", "NUL"),
        ("actor", "\udc80", "Unicode"),
        ("details", {"x": "\udc80"}, "Unicode"),
    ],
)
def test_invalid_entries_are_refused_with_the_field_named(
    field: str, value: object, message: str
) -> None:
    fields: dict[str, object] = {
        "actor": "alice",
        "role": "clinician",
        "action": "prediction",
        "target": "",
        "outcome": "ok",
    }
    fields[field] = value
    with pytest.raises(AuditEntryInvalidError, match=message) as raised:
        validate_new_entry(**fields)  # type: ignore[arg-type]
    # Callers catch AuditWriteError to refuse the audited action; invalid entries are one.
    assert isinstance(raised.value, AuditWriteError)


def test_entry_rows_round_trip_through_audit_entry() -> None:
    row = _chain(1)[0]
    entry = AuditEntry.from_row(row)
    assert entry.to_row() == row
    assert entry.outcome is Outcome.OK
    assert entry.details == {"request": 1}
    assert len(ENTRY_FIELDS) == len(row)


# -------------------------------------------------------------------------- verification


@given(CHAINS)
def test_an_untouched_chain_always_verifies(rows: list[EntryRow]) -> None:
    result = verify_chain(rows, head=_head(rows))
    assert result.ok, result.problems
    assert result.entries_checked == len(rows)
    assert result.last_seq == len(rows)


def test_an_empty_chain_verifies() -> None:
    assert verify_chain([], head=GENESIS).ok


CHANGEABLE = ENTRY_FIELDS[1:]  # every field but seq (a changed seq is a gap or a repeat)


@settings(max_examples=200)
@given(CHAINS, st.data())
def test_any_single_field_change_is_detected_at_that_entry(
    rows: list[EntryRow], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(rows) - 1), label="index")
    field = data.draw(st.sampled_from(CHANGEABLE), label="field")
    column = ENTRY_FIELDS.index(field)
    old = rows[index][column]
    assert isinstance(old, str)
    new = data.draw(TEXT.filter(lambda value: value != old), label="new value")
    tampered = list(rows)
    changed = list(tampered[index])
    changed[column] = new
    tampered[index] = tuple(changed)  # type: ignore[assignment]

    result = verify_chain(tampered, head=_head(rows))

    problem = result.first_problem
    assert problem is not None
    assert problem.kind is ProblemKind.CHANGED
    assert problem.seq == index + 1
    assert f"entry {index + 1} was changed" in problem.message


@given(CHAINS, st.data())
def test_removing_any_one_entry_names_it(rows: list[EntryRow], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(rows) - 1))
    result = verify_chain(rows[:index] + rows[index + 1 :], head=_head(rows))
    problem = result.first_problem
    assert problem is not None
    assert problem.kind is ProblemKind.REMOVED
    assert problem.seq == index + 1
    assert f"entry {index + 1} is missing (removed)" in problem.message


def test_a_removed_entry_in_the_middle_names_its_neighbours() -> None:
    rows = _chain(6)
    result = verify_chain(rows[:3] + rows[4:], head=_head(rows))
    assert result.first_problem is not None
    assert result.first_problem.message == (
        "entry 4 is missing (removed): entry 3 is followed by entry 5"
    )
    assert result.entries_checked == 3


def test_several_removed_entries_are_named_as_a_range() -> None:
    rows = _chain(8)
    problem = verify_chain(rows[:2] + rows[5:]).first_problem
    assert problem is not None
    assert problem.message == "entries 3 to 5 are missing (removed): entry 2 is followed by entry 6"


def test_removing_the_first_entries_says_where_the_chain_starts() -> None:
    rows = _chain(4)
    problem = verify_chain(rows[2:]).first_problem
    assert problem is not None
    assert (problem.kind, problem.seq) == (ProblemKind.REMOVED, 1)
    assert "the chain starts at entry 3" in problem.message


def test_an_edited_entry_whose_hash_was_recomputed_is_named_by_the_next_link() -> None:
    rows = _chain(5)
    fields = (*rows[2][:2], "mallory", *rows[2][3:9])
    rows[2] = (*fields, hash_entry(*fields))
    problem = verify_chain(rows).first_problem
    assert problem is not None
    assert (problem.kind, problem.seq) == (ProblemKind.CHANGED, 3)
    assert "entry 3 was changed: its hash was recomputed, but entry 4 still links" in (
        problem.message
    )


def test_an_entry_slipped_in_and_the_rest_renumbered_is_named_as_inserted() -> None:
    rows = _chain(5)
    forged = next(build_chain([_entry(actor="mallory")], after=ChainHead(2, rows[1][9])))
    renumbered = [(row[0] + 1, *row[1:]) for row in rows[2:]]
    result = verify_chain([*rows[:2], forged, *renumbered])
    problem = result.first_problem
    assert problem is not None
    assert (problem.kind, problem.seq) == (ProblemKind.INSERTED, 3)
    assert problem.message == "entry 3 was inserted: entry 4 links to entry 2, skipping entry 3"


def test_entries_slipped_in_at_the_start_link_past_them_to_the_start() -> None:
    rows = _chain(3)
    forged = list(build_chain([_entry(actor="mallory"), _entry(actor="eve")]))
    renumbered = [(row[0] + 2, *row[1:]) for row in rows]
    problem = verify_chain([*forged, *renumbered]).first_problem
    assert problem is not None
    assert (problem.kind, problem.seq) == (ProblemKind.INSERTED, 1)
    assert "entries 1 to 2 were inserted: entry 3 links to the start of the chain" in (
        problem.message
    )


def test_a_repeated_sequence_number_is_an_insertion() -> None:
    rows = _chain(3)
    problem = verify_chain([rows[0], rows[1], rows[1], rows[2]]).first_problem
    assert problem is not None
    assert (problem.kind, problem.seq) == (ProblemKind.INSERTED, 2)
    assert "entry 2 appears twice" in problem.message


def test_an_entry_before_the_first_is_an_insertion() -> None:
    rows = _chain(2)
    problem = verify_chain([(0, *rows[0][1:]), *rows]).first_problem
    assert problem is not None
    assert problem.kind is ProblemKind.INSERTED
    assert "sequence numbers start at 1" in problem.message


def test_entries_beyond_the_recorded_head_are_insertions() -> None:
    rows = _chain(5)
    problem = verify_chain(rows, head=ChainHead(3, rows[2][9])).first_problem
    assert problem is not None
    assert (problem.kind, problem.seq) == (ProblemKind.INSERTED, 4)
    assert "entries 4 to 5 were inserted" in problem.message


def test_a_cut_tail_is_caught_by_the_head_only() -> None:
    rows = _chain(5)
    assert verify_chain(rows[:3]).ok  # the chain alone cannot see a cut tail
    problem = verify_chain(rows[:3], head=_head(rows)).first_problem
    assert problem is not None
    assert (problem.kind, problem.seq) == (ProblemKind.REMOVED, 4)
    assert "entries 4 to 5 are missing (removed)" in problem.message


def test_a_recomputed_last_entry_is_caught_by_the_head() -> None:
    rows = _chain(3)
    rows[2] = next(build_chain([_entry(actor="mallory")], after=ChainHead(2, rows[1][9])))
    problem = verify_chain(rows, head=ChainHead(3, _chain(3)[2][9])).first_problem
    assert problem is not None
    assert (problem.kind, problem.seq) == (ProblemKind.CHANGED, 3)


def test_a_nul_smuggled_into_a_stored_field_is_a_change() -> None:
    rows = _chain(2)
    rows[0] = (*rows[0][:2], "ali\0ce", *rows[0][3:])
    problem = verify_chain(rows).first_problem
    assert problem is not None
    assert (problem.kind, problem.seq) == (ProblemKind.CHANGED, 1)


def test_verification_from_an_anchor_checks_only_what_follows() -> None:
    rows = _chain(6)
    anchor = ChainHead(3, rows[2][9])
    assert verify_chain(rows[3:], anchor=anchor, head=_head(rows)).ok
    problem = verify_chain(rows[3:], anchor=ChainHead(3, GENESIS_HASH)).first_problem
    assert problem is not None
    assert (problem.kind, problem.seq) == (ProblemKind.CHANGED, 3)


def test_without_keys_the_summary_says_only_the_hash_chain_was_checked() -> None:
    result = verify_chain(_chain(2))
    assert not result.signatures_checked
    assert "Only the hash chain was checked" in result.summary()
