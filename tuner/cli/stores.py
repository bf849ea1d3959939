"""Where the CLI's commands find their stores: the shared storage/MLflow options and how a job name or a
service job id resolves to an Optuna storage URL."""

from __future__ import annotations

from typing import Annotated, Any

import typer

StorageOpt = Annotated[str | None, typer.Option(help="Optuna storage URL (else $COTUNE_STORAGE, spec, default)")]
MlflowOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, spec, default)")]


def resolve_settings(storage: str | None, mlflow_uri: str | None, spec: Any = None):  # noqa: ANN201 - Settings
    from cotune.tuner.spec.settings import Settings

    return Settings.resolve(
        storage=storage,
        mlflow_tracking_uri=mlflow_uri,
        spec_storage=getattr(spec, "storage", None),
        spec_mlflow=getattr(spec, "mlflow_tracking_uri", None),
    )


def storage_for(job: str, storage: str | None) -> str:
    """Service job ids live in the service's storage; local job names in the local one."""
    from cotune.tuner.cli.service import is_service_job

    if storage is None and is_service_job(job):
        from cotune.tuner.spec.settings import ServiceSettings

        return ServiceSettings.from_env().storage
    return resolve_settings(storage, None).storage


def mlflow_for(job: str, mlflow_uri: str | None) -> str:
    """The MLflow tracking URI a job's runs went to: the service's for a service job id, else the local one."""
    from cotune.tuner.cli.service import is_service_job

    if mlflow_uri is None and is_service_job(job):
        from cotune.tuner.spec.settings import ServiceSettings

        return ServiceSettings.from_env().mlflow_tracking_uri
    return resolve_settings(None, mlflow_uri).mlflow_tracking_uri
