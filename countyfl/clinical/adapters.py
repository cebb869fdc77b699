"""Adapters: a site's export (CSV, Excel, SQL, FHIR) read as written, identifiers dropped first.

A CSV is read as text (missing cells as NaN), so the mapping
(:mod:`countyfl.clinical.mapping`) sees what the export says, decimal commas and codes
included, and quarantines the original value; Excel cells and SQL columns keep their own
types (a number stays a number, a date a date); FHIR Bundles become one row per Patient
(:mod:`countyfl.clinical.fhir`). Direct identifiers named in ``drop`` are removed here,
before anything else reads a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from countyfl.clinical.fhir import FhirOptions
from countyfl.errors import DataError, DataFileMissingError

if TYPE_CHECKING:
    import pandas as pd

MAX_ROWS = 5_000_000


class ExportSource(BaseModel):
    """Where a site's export is: a CSV or Excel file, or a SQL query over a database URL."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["csv", "excel", "sql", "fhir"] = "csv"
    path: Path | None = None
    """csv, excel: the file; fhir: a Bundle (.json), NDJSON file or a folder of them."""
    sheet: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    """excel: the worksheet (default: the first)."""
    delimiter: Literal[",", ";", "\t", "|"] = ","
    encoding: Literal["utf-8", "utf-8-sig", "gb18030", "latin-1"] = "utf-8"
    url: Annotated[str, Field(min_length=1, max_length=2000)] | None = None
    """sql: a SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db or sqlite:///file.db."""
    query: Annotated[str, Field(min_length=1, max_length=20_000)] | None = None
    """sql: the SELECT that returns one row per patient."""
    fhir: FhirOptions | None = None
    """fhir: which Observation and Condition codes make which columns."""

    @model_validator(mode="after")
    def _complete(self) -> ExportSource:
        if self.fhir is not None and self.format != "fhir":
            raise ValueError('[data.fhir] is for format = "fhir"')
        if self.format == "sql":
            if self.url is None or self.query is None:
                raise ValueError('format = "sql" needs url = "..." and query = "SELECT ..."')
            if self.path is not None:
                raise ValueError('format = "sql" reads url and query, not path')
        elif self.path is None:
            raise ValueError(f'format = "{self.format}" needs path = "FILE"')
        return self

    def describe(self) -> str:
        """The source for messages: the file, or the database URL without its password."""
        if self.format == "sql":
            from sqlalchemy.engine import make_url

            try:
                return make_url(self.url or "").render_as_string(hide_password=True)
            except Exception:
                return "the SQL database"
        return str(self.path)

    def name(self) -> str:
        """The short name quarantine entries carry."""
        return self.path.name if self.path is not None else "sql-query"


def _native_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing cells as None, numpy scalars as Python ones; typed cells keep their type.

    A number an Excel cell or a SQL column holds as a number is never re-read through the
    export's decimal and thousands separators (which are for numbers written as text).
    """
    import pandas as pd

    def native(value: object) -> object:
        if value is None or (isinstance(value, float) and value != value):
            return None
        if value is pd.NaT:
            return None
        item = getattr(value, "item", None)
        return item() if callable(item) and not isinstance(value, str) else value

    result = frame.astype(object).map(native)
    result.columns = [str(c) for c in result.columns]
    return pd.DataFrame(result)


@dataclass
class SourceRows:
    """An export's rows, and the problems an adapter found that belong to rows or to none."""

    frame: pd.DataFrame
    row_problems: dict[int, list[tuple[str, object, str]]] = field(default_factory=dict)
    """1-based row -> (column, value, reason): quarantines the row (an invalid resource)."""
    unattached: list[tuple[str, str, str]] = field(default_factory=list)
    """(where, what, reason) of parts of the export that belong to no row."""


def read_rows(source: ExportSource, *, drop: tuple[str, ...] = ()) -> SourceRows:
    """The export's rows with the problems its adapter found (FHIR); see :func:`read_export`."""
    if source.format == "fhir":
        from countyfl.clinical.fhir import read_fhir

        assert source.path is not None
        read = read_fhir(source.path, source.fhir or FhirOptions(), drop=drop)
        return SourceRows(read.frame, read.row_problems, read.unattached)
    return SourceRows(read_export(source, drop=drop))


def read_export(source: ExportSource, *, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    """The export's rows (CSV as text, Excel and SQL typed), without the columns in ``drop``.

    Raises DataError (naming the file or database) when it cannot be read. A FHIR export
    is read with :func:`read_rows`, which also returns its invalid resources.
    """
    import pandas as pd

    if source.format == "fhir":
        raise DataError("a FHIR export is read with read_rows (it has resource problems too)")

    if source.format in ("csv", "excel"):
        assert source.path is not None
        if not source.path.is_file():
            raise DataFileMissingError(
                f"{source.path}: the export does not exist; point data.path at the file"
            )
    try:
        if source.format == "csv":
            assert source.path is not None
            frame = pd.read_csv(
                source.path,
                dtype=str,
                sep=source.delimiter,
                encoding=source.encoding,
                nrows=MAX_ROWS,
                usecols=lambda c: c not in drop,
            )
        elif source.format == "excel":
            assert source.path is not None
            frame = pd.read_excel(
                source.path,
                sheet_name=source.sheet if source.sheet is not None else 0,
                engine="openpyxl",
                nrows=MAX_ROWS,
            )
            frame = _native_frame(frame.drop(columns=[c for c in drop if c in frame.columns]))
        else:
            frame = _read_sql(source)
            frame = _native_frame(frame.drop(columns=[c for c in drop if c in frame.columns]))
    except DataError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise DataError(
            f"{source.describe()}: cannot be read as {source.format} ({error})"
        ) from None
    return frame


def _read_sql(source: ExportSource) -> pd.DataFrame:
    import pandas as pd
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        url = make_url(source.url or "")
        if url.drivername == "postgresql":  # the driver countyfl installs (psycopg 3)
            url = url.set(drivername="postgresql+psycopg")
        engine = create_engine(url)
    except (ArgumentError, ValueError, ImportError) as error:
        raise DataError(f"data.url: not a usable database URL ({error})") from None
    try:
        with engine.connect() as connection:
            result = connection.execute(text(source.query or ""))
            columns = list(result.keys())
            rows = result.fetchmany(MAX_ROWS)
        return pd.DataFrame([tuple(r) for r in rows], columns=columns)
    except SQLAlchemyError as error:
        raise DataError(
            f"{source.describe()}: the query failed ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:300]}); check data.query and data.url"
        ) from None
    finally:
        engine.dispose()
