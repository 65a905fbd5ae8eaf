"""An S3-protocol server on 127.0.0.1 for the tests: moto's standalone server (moto[server]).

In-process (ThreadedMotoServer) for the tests' own calls and any subprocess they start (it is a
real HTTP endpoint); `auth=True` starts a `moto_server` process that checks credentials
(INITIAL_NO_AUTH_ACTION_COUNT=0: every request needs keys moto's IAM knows, so any others are refused).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from typing import Iterator

TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "atelier-test", "AWS_SECRET_ACCESS_KEY": "atelier-test-secret",
                    "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def moto_s3(auth: bool = False) -> Iterator[str]:
    """Yield the endpoint URL of a fresh S3 server on loopback; stopped on exit."""
    if not auth:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()
        return
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in TEST_CREDENTIALS.items()
                                                 if k != "AWS_DEFAULT_REGION"},
                 region_name="us-east-1").create_bucket(Bucket=name)


def list_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    keys, token = [], None
    while True:
        page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        keys += [item["Key"] for item in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]
