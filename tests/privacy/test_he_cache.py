"""The site's decryption cache: one decryption per aggregate across a node's processes."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from countyfl.privacy.he import codec
from countyfl.privacy.he.cache import CACHE_DIR, DecryptionCache, clear
from countyfl.privacy.he.keys import (
    PUBLIC_CONTEXT_FILE,
    SECRET_CONTEXT_FILE,
    init_keys,
    load_public_context,
    load_secret_context,
)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    init_keys(directory)
    return directory


@pytest.fixture(scope="module")
def aggregate(key_dir: Path) -> codec.EncryptedUpdate:
    secret = load_secret_context(key_dir / SECRET_CONTEXT_FILE)
    public = load_public_context(key_dir / PUBLIC_CONTEXT_FILE)
    updates = [codec.encrypt_update([np.arange(10.0) * k], k, secret) for k in (1, 3)]
    return codec.sum_updates(public, updates)


def _decrypt_in_a_new_process(
    key_dir: Path, state_dir: Path, update: codec.EncryptedUpdate, queue: Any
) -> None:
    # A task process of the node: its own memo is empty, its own context loaded from file.
    calls = []
    real = codec._decrypt

    def counting(*args: Any) -> np.ndarray:
        calls.append(1)
        return real(*args)

    codec._decrypt = counting  # type: ignore[assignment]
    secret = load_secret_context(key_dir / SECRET_CONTEXT_FILE)
    cache = DecryptionCache(state_dir, 7)
    (average,) = codec.decrypt_average(update, secret, [(10,)], cache)
    queue.put((len(calls), average.tolist()))


def _in_a_new_process(key_dir: Path, state_dir: Path, update: codec.EncryptedUpdate) -> Any:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=_decrypt_in_a_new_process, args=(key_dir, state_dir, update, queue)
    )
    process.start()
    answer = queue.get(timeout=120)
    process.join(timeout=60)
    return answer


def test_an_aggregate_is_decrypted_once_per_site_across_processes(
    key_dir: Path, aggregate: codec.EncryptedUpdate, tmp_path: Path
) -> None:
    expected = (np.arange(10.0) * 1 * 1 + np.arange(10.0) * 3 * 3) / 4
    calls, first = _in_a_new_process(key_dir, tmp_path, aggregate)
    assert calls == 1
    np.testing.assert_allclose(first, expected, atol=1e-5)
    calls, second = _in_a_new_process(key_dir, tmp_path, aggregate)
    assert calls == 0  # the evaluate task decrypted it; the train task reads it
    assert second == first
    # Owner-only: the folder 0700, the file 0600.
    folder = tmp_path / CACHE_DIR
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    (path,) = folder.iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.name.startswith("7-")


def test_only_the_exact_ciphertext_s_entry_is_used(
    aggregate: codec.EncryptedUpdate, tmp_path: Path
) -> None:
    cache = DecryptionCache(tmp_path, 1)
    digest = codec._digest(aggregate)
    cache.put(digest, np.ones(10))
    np.testing.assert_array_equal(cache.get(digest, 10), np.ones(10))
    assert cache.get(digest, 11) is None  # another size
    assert cache.get(bytes(32), 10) is None  # another ciphertext
    assert DecryptionCache(tmp_path, 2).get(digest, 10) is None  # another run
    # A file that does not hold what was stored for this digest is a miss, not a model.
    (path,) = (tmp_path / CACHE_DIR).iterdir()
    path.write_bytes(path.read_bytes()[:-8])
    assert cache.get(digest, 10) is None
    other = tmp_path / CACHE_DIR / f"1-{bytes(32).hex()}.npy"
    os.symlink(path, other)
    assert cache.get(bytes(32), 10) is None  # never through a symbolic link


def test_a_run_keeps_one_average_and_none_after_it_ends(tmp_path: Path) -> None:
    run = DecryptionCache(tmp_path, 5)
    other = DecryptionCache(tmp_path, 6)
    run.put(b"\x01" * 32, np.zeros(3))
    other.put(b"\x03" * 32, np.zeros(3))
    run.put(b"\x02" * 32, np.ones(3))  # the next round's aggregate replaces the last one
    names = sorted(p.name for p in (tmp_path / CACHE_DIR).iterdir())
    assert names == [f"5-{'02' * 32}.npy", f"6-{'03' * 32}.npy"]
    run.clear_run()
    assert [p.name for p in (tmp_path / CACHE_DIR).iterdir()] == [f"6-{'03' * 32}.npy"]
    clear(tmp_path)
    assert not (tmp_path / CACHE_DIR).exists()
