"""Clinical tasks defined as data: task files, site data mappings, export adapters.

A county defines its own clinical task in a TOML task file (:mod:`countyfl.clinical.task`)
and each site maps its own export onto it (:mod:`countyfl.clinical.mapping`): column
renames, units, codes, number formats, dates, identifiers. Rows come from a CSV, an Excel
workbook or a SQL database (:mod:`countyfl.clinical.adapters`) and leave this package as
validated, pseudonymised rows in the task's units, or as quarantine entries.
"""
