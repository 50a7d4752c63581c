"""S3 over real HTTP for the tests: a ``moto_server`` process, and a proxy in front of it that can fail on cue."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3

from .scp import free_port

REGION = "us-east-1"
# moto accepts any credentials; these only have to be present so botocore's default chain finds some.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def aws_env(endpoint: str, **extra: str) -> dict[str, str]:
    """Environment for a process that should reach S3 at ``endpoint`` through botocore's own settings."""
    return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, **extra}


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"moto_server did not start: {log.read_text()}")
        time.sleep(0.05)


class MotoServer:
    """``moto_server`` on a free loopback port. It keeps every object in RAM: tests delete what they made.

    With ``recording`` (a path), moto's recorder writes every request it serves there, one JSON line each:
    ``recorded_calls`` reads back the API calls one client process made.
    """

    def __init__(self, log_path: Path, recording: Path | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.recording = recording
        env = dict(os.environ)
        if recording is not None:
            env.update(MOTO_ENABLE_RECORDING="True", MOTO_RECORDER_FILEPATH=str(recording))
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        _wait_for_port(self.port, self.process, log_path)

    def client(self) -> Any:
        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        ).client("s3", endpoint_url=self.endpoint)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def _s3_operation(method: str, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[str, dict]:
    bucket, _, key = path.lstrip("/").partition("/")
    params: dict[str, Any] = {"Bucket": bucket}
    if not key:
        operation = {"GET": "ListObjectsV2" if "list-type" in query else "ListObjects", "HEAD": "HeadBucket"}
        if "prefix" in query:
            params["Prefix"] = query["prefix"][0]
        return operation.get(method, f"{method}Bucket"), params
    params["Key"] = urllib.parse.unquote(key)
    if method == "PUT":
        copy = any(name.lower() == "x-amz-copy-source" for name in headers)
        return ("UploadPart" if "uploadId" in query else "CopyObject" if copy else "PutObject"), params
    if method == "POST":
        return ("CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"), params
    if method == "DELETE":
        return ("AbortMultipartUpload" if "uploadId" in query else "DeleteObject"), params
    return {"GET": "GetObject", "HEAD": "HeadObject"}[method], params


def recorded_calls(recording: Path, app_id: str) -> list[Any]:
    """The S3 and DynamoDB calls in a moto recording made by clients whose user agent names ``app_id`` (botocore
    adds ``app/<AWS_SDK_UA_APP_ID>``), as tests/support/iam.py's ApiCall."""
    from .iam import ApiCall

    calls = []
    for line in recording.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        headers = entry["headers"]
        agent = next((v for k, v in headers.items() if k.lower() == "user-agent"), "")
        if f"app/{app_id}" not in agent:
            continue
        target = next((v for k, v in headers.items() if k.lower() == "x-amz-target"), "")
        if target.startswith("DynamoDB_"):
            body = base64.b64decode(entry["body"]) if entry.get("body_encoded") else entry["body"]
            params = json.loads(body)
            keep = {k: params[k] for k in ("TableName", "IndexName", "Item", "ReturnValues") if k in params}
            if "RequestItems" in params:  # BatchGetItem / BatchWriteItem: one call per table
                calls += [ApiCall("dynamodb", target.split(".")[1], {"TableName": t}) for t in params["RequestItems"]]
                continue
            calls.append(ApiCall("dynamodb", target.split(".")[1], keep))
            continue
        url = urllib.parse.urlsplit(entry["url"])
        operation, params = _s3_operation(entry["method"], url.path, urllib.parse.parse_qs(url.query, True), headers)
        calls.append(ApiCall("s3", operation, params))
    return calls


def empty_bucket(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def bucket_objects(client: Any, bucket: str) -> dict[str, bytes]:
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return objects


_INTERNAL_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)


class FailingS3Proxy:
    """An HTTP proxy in front of moto that forwards the first ``healthy_requests`` requests, then fails.

    ``mode="500"``: every later request is answered 500 InternalError, as S3 does in a partial outage.
    ``mode="gone"``: the endpoint disappears: the request in progress gets no answer, open connections are
    closed and new ones refused, as when the network path to S3 is lost.
    A request is either forwarded whole or not at all, so "stored" and "answered success" stay comparable.
    """

    def __init__(self, upstream_port: int, healthy_requests: int, mode: str = "500") -> None:
        assert mode in {"500", "gone"}
        self.upstream_port = upstream_port
        self.healthy_requests = healthy_requests
        self.mode = mode
        self.forwarded = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _admit(self) -> bool:
        with self._lock:
            if self.forwarded < self.healthy_requests:
                self.forwarded += 1
                return True
            self.failed += 1
            return False

    def go_away(self) -> None:
        self.server.socket.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._connections.add(self.connection)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._connections.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if not proxy._admit():
                    if proxy.mode == "gone":
                        proxy.go_away()
                        self.close_connection = True
                        return
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_INTERNAL_ERROR)))
                    self.end_headers()
                    self.wfile.write(_INTERNAL_ERROR)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    payload = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in {"content-length", "transfer-encoding", "connection", "server", "date"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler
