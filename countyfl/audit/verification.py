"""Verification of the audit chain and its signed checkpoints, as pure functions over rows.

:func:`verify_chain` walks stored rows in ``seq`` order once, keeping O(1) state, and stops
at the first bad entry. It tells apart:

* changed: an entry's stored hash does not match its contents, or its hash was recomputed
  so that the next entry no longer links to it, or it no longer matches the hash a signed
  checkpoint or the chain's head recorded for it;
* removed: a gap in the sequence numbers, or the chain ends before the head or a signed
  checkpoint says it does;
* inserted: an entry links to an earlier entry than the one before it (the ones in between
  were slipped in), a sequence number repeats or goes backwards, or the chain goes on past
  its recorded head.

With public keys it also checks every checkpoint's signature, that a site's copy of the
checkpoints is still in the database, and that the chain still has, at each checkpoint's
``seq``, the hash that was signed. Without public keys only the hash chain is checked, and a
chain recomputed from an edited entry onwards passes: the result says so.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from countyfl.audit.chain import GENESIS, GENESIS_HASH, ChainHead, EntryRow, hash_entry
from countyfl.audit.checkpoints import Checkpoint, checkpoint_signature_valid, key_id_of

RECENT_LINKS = 4096
"""How many preceding hashes the walk remembers to tell an insertion from a changed link."""


class ProblemKind(StrEnum):
    """What is wrong with the audit log."""

    CHANGED = "changed"
    REMOVED = "removed"
    INSERTED = "inserted"
    FORGED_CHECKPOINT = "forged-checkpoint"
    """A checkpoint's signature does not verify: it was altered or never signed by the key."""
    UNVERIFIABLE_CHECKPOINT = "unverifiable-checkpoint"
    """A checkpoint names a key whose public key was not given."""
    REMOVED_CHECKPOINT = "removed-checkpoint"
    """A checkpoint in a site's copy is no longer in the database."""
    EMPTY = "empty"
    """The log holds no entry at all: a countyfl database always has some (its first admin)."""
    UNANCHORED = "unanchored"
    """Public keys were given but no signed checkpoint vouches for any entry."""


@dataclass(frozen=True)
class Problem:
    """One thing found wrong: its kind, the entry it concerns and a readable message."""

    kind: ProblemKind
    seq: int
    """The first entry concerned (for checkpoint problems, the checkpoint's entry)."""
    message: str


@dataclass(frozen=True)
class VerificationResult:
    """What :func:`verify_chain` found."""

    entries_checked: int
    last_seq: int
    """The last entry walked without a problem (the anchor's seq when none was)."""
    signatures_checked: bool
    """Whether public keys were given; if not, a recomputed chain would not be noticed."""
    checkpoints_verified: int = 0
    """Checkpoints whose signature verified and whose entry was found with the signed hash."""
    problems: tuple[Problem, ...] = field(default=())
    compared: tuple[str, ...] = field(default=())
    """What the chain was compared against, one phrase each (for the summary)."""
    trusted: tuple[Checkpoint, ...] = field(default=())
    """The checkpoints whose signature verified (each once)."""

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        """The problem at the earliest entry, or None."""
        return min(self.problems, key=lambda problem: problem.seq, default=None)

    def summary(self) -> str:
        """One paragraph for a person: intact or the first problem, and what was checked."""
        compared = f" Compared against: {'; '.join(self.compared)}." if self.compared else ""
        return self._verdict() + compared

    def _verdict(self) -> str:
        if not self.ok:
            first = self.first_problem
            assert first is not None
            more = len(self.problems) - 1
            tail = f" ({more} more problem{'s' if more != 1 else ''} found)" if more else ""
            return f"audit log TAMPERED WITH: {first.message}{tail}"
        entries = f"{self.entries_checked} entr{'y' if self.entries_checked == 1 else 'ies'}"
        if not self.signatures_checked:
            return (
                f"hash chain intact: {entries}. Only the hash chain was checked (no public key "
                "given): a chain recomputed after an edit would also pass. Pass --public-key "
                "to check the signed checkpoints."
            )
        if self.checkpoints_verified == 0:
            return (
                f"hash chain intact: {entries}, but there are no signed checkpoints to check it "
                "against: a chain recomputed after an edit would also pass. Sign one with "
                "'countyfl audit checkpoint'."
            )
        return (
            f"audit log intact: {entries}; {self.checkpoints_verified} signed checkpoint"
            f"{'s' if self.checkpoints_verified != 1 else ''} verified and matched."
        )


def _entries(first: int, last: int) -> str:
    return f"entry {first}" if first == last else f"entries {first} to {last}"


def _are(first: int, last: int) -> str:
    return "is" if first == last else "are"


def _were(first: int, last: int) -> str:
    return "was" if first == last else "were"


def check_checkpoints(
    checkpoints: Iterable[Checkpoint],
    public_keys: Sequence[Ed25519PublicKey],
    site_checkpoints: Iterable[Checkpoint] | None = None,
    *,
    site_name: str = "the site's copy",
    copies: Sequence[tuple[str, Sequence[Checkpoint]]] = (),
) -> tuple[list[Checkpoint], list[Problem]]:
    """Check the signatures of the database's (and copies') checkpoints.

    Parameters
    ----------
    checkpoints : Iterable[Checkpoint]
        The checkpoints stored in the database.
    public_keys : Sequence[Ed25519PublicKey]
        The keys whose signatures are trusted.
    site_checkpoints : Iterable[Checkpoint] | None
        A copy kept elsewhere; each must still be in the database.
    site_name : str
        How messages name the copy (e.g. its file name).
    copies : Sequence[tuple[str, Sequence[Checkpoint]]]
        More named copies, checked like the site's (e.g. the verifier's own memory).

    Returns
    -------
    tuple[list[Checkpoint], list[Problem]]
        The trusted checkpoints (signature verified, each once) and the problems found.
    """
    keys = {key_id_of(key): key for key in public_keys}
    trusted: dict[str, Checkpoint] = {}
    problems: list[Problem] = []

    def check(checkpoint: Checkpoint, where: str) -> None:
        key = keys.get(checkpoint.key_id)
        if key is None:
            given = ", ".join(sorted(keys)) or "none"
            problems.append(
                Problem(
                    ProblemKind.UNVERIFIABLE_CHECKPOINT,
                    checkpoint.seq,
                    f"{checkpoint.describe()} ({where}) cannot be verified: key "
                    f"{checkpoint.key_id} is not among the public keys given ({given}); pass "
                    "its .pub file with --public-key",
                )
            )
        elif not checkpoint_signature_valid(checkpoint, key):
            problems.append(
                Problem(
                    ProblemKind.FORGED_CHECKPOINT,
                    checkpoint.seq,
                    f"{checkpoint.describe()} ({where}) has an invalid signature: it was "
                    "altered after signing or was never signed with that key",
                )
            )
        else:
            trusted.setdefault(checkpoint.signature, checkpoint)

    stored = set()
    for checkpoint in checkpoints:
        stored.add(checkpoint.signature)
        check(checkpoint, "in the database")
    named = [(site_name, list(site_checkpoints or ())), *copies]
    for name, copy in named:
        for checkpoint in copy:
            check(checkpoint, f"in {name}")
            if checkpoint.signature not in stored:
                problems.append(
                    Problem(
                        ProblemKind.REMOVED_CHECKPOINT,
                        checkpoint.seq,
                        f"{checkpoint.describe()} is in {name} but no longer in the database: "
                        "it was removed",
                    )
                )
    return list(trusted.values()), problems


def verify_chain(
    rows: Iterable[EntryRow],
    *,
    head: ChainHead | None = None,
    checkpoints: Iterable[Checkpoint] = (),
    public_keys: Sequence[Ed25519PublicKey] | None = None,
    site_checkpoints: Iterable[Checkpoint] | None = None,
    site_name: str = "the site's copy",
    anchor: ChainHead = GENESIS,
    copies: Sequence[tuple[str, Sequence[Checkpoint]]] = (),
) -> VerificationResult:
    """Verify stored entry rows, given in ``seq`` order, and the checkpoints over them.

    Parameters
    ----------
    rows : Iterable[EntryRow]
        The entries after ``anchor`` in ``seq`` order, as stored (streamed: read once).
    head : ChainHead | None
        The head the log recorded at its last append; the chain must end exactly there.
    checkpoints : Iterable[Checkpoint]
        The checkpoints stored with the log. Ignored without ``public_keys``.
    public_keys : Sequence[Ed25519PublicKey] | None
        Keys whose checkpoint signatures are trusted. None: check the hash chain only.
    site_checkpoints : Iterable[Checkpoint] | None
        A site's copy of the checkpoints, checked like the stored ones and which must all
        still be stored.
    site_name : str
        How messages name the site's copy.
    anchor : ChainHead
        The entry before the first row (the empty chain by default). A trusted checkpoint
        lets a caller verify only what came after it.
    copies : Sequence[tuple[str, Sequence[Checkpoint]]]
        More named copies of checkpoints, checked like ``site_checkpoints``.

    Returns
    -------
    VerificationResult
        Counts and the problems found; the chain walk reports at most its first bad entry.
    """
    problems: list[Problem] = []
    trusted: list[Checkpoint] = []
    if public_keys is not None:
        trusted, checkpoint_problems = check_checkpoints(
            checkpoints, public_keys, site_checkpoints, site_name=site_name, copies=copies
        )
        problems.extend(checkpoint_problems)
    count, last, last_hash, chain_problem, matched = _walk(rows, anchor, trusted)
    if chain_problem is not None:
        problems.append(chain_problem)
    else:
        problems.extend(_check_end(last, last_hash, head, trusted))
    return VerificationResult(
        entries_checked=count,
        last_seq=last,
        signatures_checked=public_keys is not None,
        checkpoints_verified=matched,
        problems=tuple(problems),
        trusted=tuple(trusted),
    )


def _walk(
    rows: Iterable[EntryRow], anchor: ChainHead, trusted: Sequence[Checkpoint]
) -> tuple[int, int, str, Problem | None, int]:
    """Walk the chain; return (entries checked, last good seq, its hash, problem, matched)."""
    signed: dict[int, list[Checkpoint]] = {}
    for checkpoint in trusted:
        if checkpoint.seq > anchor.seq:
            signed.setdefault(checkpoint.seq, []).append(checkpoint)
    signed_seqs = iter(sorted(signed))
    next_signed = next(signed_seqs, -1)
    last_matched_seq = anchor.seq
    matched = 0

    expected = anchor.seq + 1
    prev_hash = anchor.entry_hash
    # recent[-1] is the hash of entry expected - 1, recent[-1 - k] of entry expected - 1 - k.
    recent: deque[str] = deque([prev_hash], maxlen=RECENT_LINKS)
    count = 0
    digest = hash_entry
    for row in rows:
        seq, recorded_at, actor, role, action, target, outcome, details, row_prev, row_hash = row
        if seq != expected:
            return count, expected - 1, prev_hash, _sequence_problem(seq, expected, anchor), matched
        try:
            computed: str | None = digest(
                seq, recorded_at, actor, role, action, target, outcome, details, row_prev
            )
        except ValueError:  # a NUL or lone surrogate: no valid entry has one
            computed = None
        if row_prev != prev_hash:
            problem = _link_problem(seq, row_prev, computed == row_hash, recent, anchor)
            return count, expected - 1, prev_hash, problem, matched
        if computed != row_hash:
            problem = Problem(
                ProblemKind.CHANGED,
                seq,
                f"entry {seq} was changed: its stored hash does not match its contents",
            )
            return count, expected - 1, prev_hash, problem, matched
        if seq == next_signed:
            for checkpoint in signed[seq]:
                if checkpoint.entry_hash != row_hash:
                    problem = Problem(
                        ProblemKind.CHANGED,
                        seq,
                        f"entry {seq} does not match {checkpoint.describe()}: "
                        f"{_entries(last_matched_seq + 1, seq)} {_were(last_matched_seq + 1, seq)}"
                        " changed and the chain's hashes recomputed from there on",
                    )
                    return count, expected - 1, prev_hash, problem, matched
                matched += 1
            last_matched_seq = seq
            next_signed = next(signed_seqs, -1)
        prev_hash = row_hash
        recent.append(row_hash)
        expected += 1
        count += 1
    return count, expected - 1, prev_hash, None, matched


def _sequence_problem(seq: int, expected: int, anchor: ChainHead) -> Problem:
    if seq > expected:
        missing = _entries(expected, seq - 1)
        verb = _are(expected, seq - 1)
        if expected == anchor.seq + 1:
            where = (
                f"the chain starts at entry {seq}"
                if anchor.seq == 0
                else f"entry {anchor.seq} is followed by entry {seq}"
            )
        else:
            where = f"entry {expected - 1} is followed by entry {seq}"
        return Problem(
            ProblemKind.REMOVED, expected, f"{missing} {verb} missing (removed): {where}"
        )
    if seq < 1:
        message = f"entry {seq} was inserted: sequence numbers start at 1"
    elif seq == expected - 1:
        message = f"entry {seq} appears twice (inserted): two rows have this sequence number"
    else:
        message = f"entry {seq} was inserted: it comes after entry {expected - 1}, out of order"
    return Problem(ProblemKind.INSERTED, seq, message)


def _link_problem(
    seq: int, row_prev: str, self_consistent: bool, recent: deque[str], anchor: ChainHead
) -> Problem:
    """The problem when entry ``seq``'s prev_hash is not the previous entry's hash."""
    # Does it link to an earlier entry? Then the ones after that were slipped in between.
    for back in range(2, len(recent) + 1):
        if recent[-back] == row_prev:
            linked = seq - back
            start = "the start of the chain" if linked == 0 else f"entry {linked}"
            return Problem(
                ProblemKind.INSERTED,
                linked + 1,
                f"{_entries(linked + 1, seq - 1)} {_were(linked + 1, seq - 1)} inserted: "
                f"entry {seq} links to {start}, skipping {_entries(linked + 1, seq - 1)}",
            )
    if not self_consistent:
        return Problem(
            ProblemKind.CHANGED,
            seq,
            f"entry {seq} was changed: its stored hash does not match its contents",
        )
    if seq == 1 and anchor.seq == 0 and anchor.entry_hash == GENESIS_HASH:
        return Problem(
            ProblemKind.CHANGED,
            1,
            "entry 1 was changed: its prev_hash is not the chain's start (64 zeros)",
        )
    return Problem(
        ProblemKind.CHANGED,
        seq - 1,
        f"entry {seq - 1} was changed: its hash was recomputed, but entry {seq} still links "
        "to the hash it had before",
    )


def _check_end(
    last: int, last_hash: str, head: ChainHead | None, trusted: Sequence[Checkpoint]
) -> list[Problem]:
    """Problems at the end of an otherwise intact chain: cut short or extended."""
    problems: list[Problem] = []
    beyond = [checkpoint for checkpoint in trusted if checkpoint.seq > last]
    if beyond:
        furthest = max(beyond, key=lambda checkpoint: checkpoint.seq)
        problems.append(
            Problem(
                ProblemKind.REMOVED,
                last + 1,
                f"{_entries(last + 1, furthest.seq)} {_are(last + 1, furthest.seq)} missing "
                f"(removed): {furthest.describe()} covers entry {furthest.seq}, but the chain "
                f"ends at entry {last}",
            )
        )
    if head is None:
        return problems
    if head.seq > last:
        problems.append(
            Problem(
                ProblemKind.REMOVED,
                last + 1,
                f"{_entries(last + 1, head.seq)} {_are(last + 1, head.seq)} missing (removed): "
                f"the chain ends at entry {last}, but the log's head records entry {head.seq}",
            )
        )
    elif head.seq < last:
        problems.append(
            Problem(
                ProblemKind.INSERTED,
                head.seq + 1,
                f"{_entries(head.seq + 1, last)} {_were(head.seq + 1, last)} inserted: the log's "
                f"head records its last entry as {head.seq}, but the chain goes on to {last}",
            )
        )
    elif head.entry_hash != last_hash:
        problems.append(
            Problem(
                ProblemKind.CHANGED,
                last,
                f"entry {last} was changed: its hash was recomputed and no longer matches the "
                "hash the log's head recorded for it",
            )
        )
    return problems
