"""Model artifacts: where they are, reading them safely, and judging what they contain.

An artifact is a numpy ``.npz`` of plain arrays (a state dict). The registry never trusts a
path or a file blindly:

- reading opens the file without following a symbolic link (``O_NOFOLLOW``), accepts only a
  regular file of at most :data:`MAX_ARTIFACT_BYTES`, and checks the sha256 of the very bytes
  it returns;
- registration refuses a state dict with non-numeric arrays, non-finite values or values
  beyond :data:`MAX_ABS_VALUE`, and (for a version that carries an input transform) weights
  that do not fit the architecture or that answer a non-finite probability for typical
  inputs (:func:`inspect_state`).

Building a network imports torch; that happens inside the functions that need it, so the
CLI stays quick for everything else.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from countyfl.registry.errors import ArtifactIntegrityError, InvalidInputError, UnsafeModelError
from countyfl.registry.schemas import FeatureTransform

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from torch import nn

MAX_ARTIFACT_BYTES = 256 * 1024 * 1024
"""The largest artifact the registry reads (a million-parameter model takes about 4 MB)."""
MAX_ABS_VALUE = 1e6
"""The largest magnitude a weight may have; trained models stay many orders below it."""
PROBE_Z = (0.0, 3.0, -3.0)
"""Standardised inputs every feature is probed at: the mean, and three scales either side."""

State = dict[str, "npt.NDArray[Any]"]


def artifact_path(location: str) -> Path:
    """The local file an artifact location names (a path or a ``file://`` URI).

    Raises
    ------
    InvalidInputError
        If the location is a URI of another scheme (only local files are supported).
    """
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive, not a scheme
        raise InvalidInputError(
            f"artifact location {location!r} uses {parsed.scheme}://, which the registry cannot "
            "read; give a local path or a file:// URI"
        )
    return Path(location)


def read_checked(location: str, expected: str, label: str | None) -> bytes:
    """The file's bytes if their sha256 is ``expected``; ``label`` None: not registered yet.

    The file is opened without following a symbolic link and must be a regular file of at
    most :data:`MAX_ARTIFACT_BYTES`.

    Raises
    ------
    ArtifactIntegrityError
        If the file is missing, a symbolic link, not a regular file, too large, unreadable,
        or its sha256 differs from ``expected``.
    """
    path = artifact_path(location)
    subject = f"the artifact of {label}" if label else "the artifact to register"
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        remedy = "restore the file or archive the version" if label else "publish it again"
        raise ArtifactIntegrityError(
            f"{subject} is missing: {path} does not exist; {remedy} (its sha256 must be {expected})"
        ) from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ArtifactIntegrityError(
                f"{subject} at {path} is a symbolic link; the registry reads only the file "
                "itself. Put the model file there (publish the model again)"
            ) from None
        raise ArtifactIntegrityError(
            f"{subject} at {path} cannot be read ({error.strerror}); check the file and its "
            "permissions"
        ) from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactIntegrityError(
                f"{subject} at {path} is not a regular file; give the .npz file written by "
                "`countyfl model publish`"
            )
        if info.st_size > MAX_ARTIFACT_BYTES:
            raise ArtifactIntegrityError(
                f"{subject} at {path} has {info.st_size} bytes, more than the "
                f"{MAX_ARTIFACT_BYTES} a model artifact may have"
            )
        with os.fdopen(os.dup(descriptor), "rb") as handle:
            data = handle.read(MAX_ARTIFACT_BYTES + 1)
    except OSError as error:
        raise ArtifactIntegrityError(
            f"{subject} at {path} cannot be read ({error.strerror}); check the file"
        ) from None
    finally:
        os.close(descriptor)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        if label:
            problem = f"but {expected} was registered: the file was changed or replaced"
            remedy = "restore the registered file or register the new one as a new version"
        else:
            problem = f"but its lineage says {expected}: the file is not the one published"
            remedy = "publish the model again"
        raise ArtifactIntegrityError(
            f"{subject} at {path} has sha256 {actual}, {problem}. Do not use it; {remedy}"
        )
    return data


def parse_state(data: bytes, where: str) -> State:
    """The arrays of an ``.npz`` archive (no pickles).

    Raises
    ------
    ArtifactIntegrityError
        If the bytes are not a numpy ``.npz`` archive of plain arrays.
    """
    import numpy as np

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise ArtifactIntegrityError(
            f"{where} is not a numpy .npz archive of plain arrays ({error})"
        ) from None


def inspect_state(
    state: Mapping[str, npt.NDArray[Any]],
    *,
    architecture: str,
    features: FeatureTransform | None,
    label: str,
) -> None:
    """Refuse a model that is not what a model must be, whatever its lineage says.

    Every array must be numeric, finite and within :data:`MAX_ABS_VALUE`. With an input
    transform, the weights must load into ``architecture`` for that many features, and the
    network must answer a finite probability for inputs at the mean and three standard
    scales either side of it (:data:`PROBE_Z`).

    Raises
    ------
    UnsafeModelError
        Naming the array or the check that failed.
    """
    import numpy as np

    if not state:
        raise UnsafeModelError(f"{label}: the artifact holds no arrays")
    for key, array in state.items():
        if array.dtype.kind not in "fiub":
            raise UnsafeModelError(
                f"{label}: array {key!r} has dtype {array.dtype}, not numbers; a model's "
                "weights are numbers"
            )
        values = np.asarray(array, dtype=np.float64)
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise UnsafeModelError(
                f"{label}: array {key!r} holds {bad} non-finite value(s) (NaN or infinity); "
                "such a model answers nothing meaningful. Train and publish it again"
            )
        if values.size and float(np.abs(values).max()) > MAX_ABS_VALUE:
            raise UnsafeModelError(
                f"{label}: array {key!r} holds values beyond ±{MAX_ABS_VALUE:g}; a trained "
                "model's weights are far smaller. Train and publish it again"
            )
    if features is None:
        return
    module = build_module(architecture, state, len(features.names), label)
    probes = np.asarray([[z] * len(features.names) for z in PROBE_Z], dtype=np.float32)
    answered = probabilities(module, probes)
    if not np.isfinite(answered).all():
        raise UnsafeModelError(
            f"{label}: the model answers a non-finite probability for typical inputs; "
            "train and publish it again"
        )


def build_module(
    architecture: str, state: Mapping[str, npt.NDArray[Any]], num_features: int, label: str
) -> nn.Module:
    """``architecture`` for ``num_features`` inputs with ``state`` loaded (strictly).

    Raises
    ------
    UnsafeModelError
        If the architecture is unknown or the weights do not fit it.
    """
    import numpy as np
    import torch

    from countyfl import models
    from countyfl.errors import UnknownNameError

    try:
        module = models.build(architecture, num_features)
    except UnknownNameError as error:
        raise UnsafeModelError(f"{label}: {error}") from None
    try:
        module.load_state_dict(
            {key: torch.from_numpy(np.asarray(value)) for key, value in state.items()}
        )
    except (RuntimeError, TypeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsafeModelError(
            f"{label}: its weights do not fit {architecture} with {num_features} features ({first})"
        ) from None
    module.eval()
    return module


def probabilities(module: nn.Module, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """The positive class's probability for standardised ``inputs`` (training's own function)."""
    import torch

    from countyfl.training.local import predict_proba

    with torch.no_grad():
        return predict_proba(module, inputs)
