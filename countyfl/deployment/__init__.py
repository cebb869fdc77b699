"""Deployment at the institutions: site.toml, site data, task approval, certificates and keys."""

from __future__ import annotations

from countyfl.deployment.certs import (
    CertificateError,
    CertificateExistsError,
    CertificateSet,
    NodeKeys,
    add_node,
    init_certificates,
    load_node_private_key,
)
from countyfl.deployment.check import SiteCheck, check_site
from countyfl.deployment.site import SiteConfig, SiteConfigError, load_site, render_site_toml
from countyfl.deployment.site_data import SiteData, export_hospital_csv, load_site_data
from countyfl.deployment.tasks import (
    Refusal,
    TaskAlreadyApprovedError,
    TaskManifest,
    TaskManifestError,
    TaskNotApprovedError,
    approve_task,
    check_approved,
    enforce_approval,
    manifest_for,
    manifest_hash,
    read_refusals,
    read_task_file,
    record_refusal,
    write_task_file,
)

__all__ = [
    "CertificateError",
    "CertificateExistsError",
    "CertificateSet",
    "NodeKeys",
    "Refusal",
    "SiteCheck",
    "SiteConfig",
    "SiteConfigError",
    "SiteData",
    "TaskAlreadyApprovedError",
    "TaskManifest",
    "TaskManifestError",
    "TaskNotApprovedError",
    "add_node",
    "approve_task",
    "check_approved",
    "check_site",
    "enforce_approval",
    "export_hospital_csv",
    "init_certificates",
    "load_node_private_key",
    "load_site",
    "load_site_data",
    "manifest_for",
    "manifest_hash",
    "read_refusals",
    "read_task_file",
    "record_refusal",
    "render_site_toml",
    "write_task_file",
]
