"""Fixtures for the Dataflow-path tests: loopback GCS + BigQuery emulators wired into Beam's clients."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.dataflow.emulators import BigQueryEmulator, GcsEmulator

PROJECT = "emulated-project"
TEMP_BUCKET = "beam-temp"


@dataclass(frozen=True)
class CloudEmulators:
    gcs: GcsEmulator
    bigquery: BigQueryEmulator
    client: object  # google.cloud.bigquery.Client on the emulator
    temp_location: str


@pytest.fixture(scope="module")
def emulators(tmp_path_factory) -> Iterator[CloudEmulators]:
    """Both emulators, and Beam's three cloud clients pointed at them with anonymous credentials.

    Beam's apitools BigQuery client has a fixed base URL (patched); google-cloud-bigquery honours
    BIGQUERY_EMULATOR_HOST and google-cloud-storage STORAGE_EMULATOR_HOST. Credentials are anonymous, which
    also keeps Beam from its ~25 s credential retry and google-auth from probing the GCE metadata server.
    """
    pytest.importorskip("bqemulator", reason="pip install '.[dev]' (bqemulator) for the BigQuery tests")
    import google.auth
    from apache_beam.internal.gcp import auth as beam_auth
    from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    anonymous = AnonymousCredentials()
    gcs = GcsEmulator.start(tmp_path_factory.mktemp("gcs"))
    bq = None
    try:
        gcs.create_bucket(TEMP_BUCKET)
        bq = BigQueryEmulator(gcs.root, PROJECT).start()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
            patch.setenv("BIGQUERY_EMULATOR_HOST", bq.url.removeprefix("http://"))
            patch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
            patch.setenv("NO_GCE_CHECK", "True")
            patch.setattr(google.auth, "default", lambda *args, **kwargs: (anonymous, PROJECT))
            patch.setattr(
                beam_auth,
                "get_service_credentials",
                lambda *args, **kwargs: beam_auth._ApitoolsCredentialsAdapter(anonymous),
            )
            patch.setattr(bigquery_v2_client.BigqueryV2, "BASE_URL", f"{bq.url}/bigquery/v2/")
            client = bigquery.Client(project=PROJECT, credentials=anonymous, client_options={"api_endpoint": bq.url})
            yield CloudEmulators(gcs, bq, client, f"gs://{TEMP_BUCKET}/tmp")
    finally:
        if bq is not None:
            bq.stop()
        gcs.stop()


@pytest.fixture
def undecorated(monkeypatch):
    """Write to the table itself: bqemulator cannot address a ``table$YYYYMMDD`` partition."""
    from pipelines import bigquery

    monkeypatch.setattr(bigquery.TableRef, "partition", lambda self, run_date: self.spec)
