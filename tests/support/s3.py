"""A real S3-compatible server on loopback for tests: moto's threaded server on 127.0.0.1.

``s3_bucket()`` starts ``moto.server.ThreadedMotoServer`` on a free port, creates a bucket, sets the
standard AWS variables in this process (pyarrow, boto3 and the log's store read them) and yields an
:class:`S3Bucket`: ``uri`` (``s3://<bucket>/<prefix>``), ``env`` (the variables a subprocess needs:
pass ``{**os.environ, **bucket.env}``) and ``client()`` (boto3, for a test's own setup and checks).
On exit the variables are restored and the server stopped.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class S3Bucket:
    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    prefix: str
    env: dict[str, str]

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def object_keys(self, under: str = "") -> list[str]:
        """Every key under ``prefix/under``, relative to the prefix, sorted."""
        start = f"{self.prefix}/{under}" if self.prefix else under
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
        keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        return sorted(key.removeprefix(f"{self.prefix}/") for key in keys if not key.endswith("/"))


@contextmanager
def s3_bucket(prefix: str = "predictions") -> Iterator[S3Bucket]:
    """A fresh bucket on a moto server of its own (see the module docstring)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as error:  # a missing test dependency fails the test, naming it
        raise AssertionError(f"moto[server] is not installed ({error}); pip install the test extra") from error

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance metadata service for credentials
        }
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            bucket = S3Bucket(endpoint, f"test-{secrets.token_hex(4)}", prefix, env)
            bucket.client().create_bucket(Bucket=bucket.bucket)
            yield bucket
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    finally:
        server.stop()
