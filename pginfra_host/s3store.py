"""The S3 copies of dumps: part sizes that fit any object, temporary keys, server-side copies,
a manifest as the mark of publication (boto3 from python3-boto3, imported only when needed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from datetime import datetime
from pathlib import Path

from pginfra_host.backup_config import Config, S3Settings
from pginfra_host.dumps import GLOBALS, backup_state, entry_record
from pginfra_host.pg import controldata_system_identifier, sql_system_identifier
from pginfra_host.runner import ConfigError, Failed, JobLog
from pginfra_host.util import GiB, MiB, TiB

MIN_PART = 5 * MiB          # S3's smallest multipart part (but the last)


DEFAULT_PART = 8 * MiB      # boto3's default chunk


MAX_PART = 5 * GiB          # S3's largest part


MAX_PARTS = 10_000          # S3's most parts in one upload


PLAN_FOR = 1 * TiB          # every upload is sized to fit an object at least this large


DELETE_BATCH = 1000         # DeleteObjects takes at most 1000 keys


def chunk_size(size: int, override: int | None = None) -> int:
    """Multipart chunk: big enough that an object of max(size, 1 TiB) fits in 10,000 parts,
    rounded up to a MiB, at least 8 MiB (boto3's default). ``override`` (tests) is honoured
    down to S3's 5 MiB floor."""
    if override:
        return min(MAX_PART, max(MIN_PART, int(override)))
    need = -(-max(int(size), PLAN_FOR) // MAX_PARTS)
    chunk = max(DEFAULT_PART, -(-need // MiB) * MiB)
    if chunk > MAX_PART:
        raise Failed(f"{size} bytes do not fit in {MAX_PARTS} parts of at most 5 GiB")
    return chunk


def batches(seq: list, size: int = DELETE_BATCH):
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def make_s3_client(s3: S3Settings, log: JobLog | None = None):
    """boto3's client for the bucket. Credentials: boto3's chain (environment, instance
    profile), with ``credentials_file`` as the shared credentials file when it exists.
    ``ca_file``: the CA bundle that signed the endpoint's certificate (empty: the system's)."""
    try:
        import boto3
        import botocore
        from botocore.config import Config as BotoConfig
    except ImportError:
        raise Failed("boto3 is not installed (apt-get install python3-boto3)") from None

    if s3.credentials_file and os.path.exists(s3.credentials_file):
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = s3.credentials_file
    options = {"signature_version": "s3v4", "connect_timeout": 10, "read_timeout": 120,
               "s3": {"addressing_style": "path" if s3.endpoint_url else "auto"}}
    note = None
    try:
        config = BotoConfig(**options,
                            request_checksum_calculation=s3.request_checksum_calculation)
    except TypeError:
        config = BotoConfig(**options)
        note = (f"request_checksum_calculation={s3.request_checksum_calculation} ignored: "
                f"botocore {botocore.__version__} does not have it (it sends no CRC "
                "checksums by default)")
    if note and log is not None:
        log.emit("s3-client", "info", detail=note)
    session = boto3.session.Session(region_name=s3.region)
    return session.client("s3", endpoint_url=s3.endpoint_url or None, config=config,
                          verify=s3.ca_file or None)


def is_not_found(exc) -> bool:
    """A botocore ClientError for a key (or bucket) that is not there."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404


class S3Store:
    """One host's dumps in the bucket, under ``{prefix}/{host}/{system_identifier}/dumps/``
    (base/ and wal/ beside it: the pre-pgBackRest layout, which retention removes)."""

    def __init__(self, s3: S3Settings, host: str, system_identifier: str, log: JobLog,
                 client=None, chunk_override: int | None = None):
        self.s3, self.bucket, self.log = s3, s3.bucket, log
        self.system_identifier = str(system_identifier)
        self.root = "/".join(p for p in (s3.prefix, host, self.system_identifier) if p) + "/"
        self.client = client or make_s3_client(s3, log)
        self.chunk_override = chunk_override

    def key(self, *parts: str) -> str:
        return self.root + "/".join(parts)

    def extra_args(self, sha256: str) -> dict:
        extra = {"ServerSideEncryption": self.s3.sse, "StorageClass": self.s3.storage_class,
                 "Metadata": {"sha256": sha256}}
        if self.s3.sse == "aws:kms" and self.s3.kms_key_id:
            extra["SSEKMSKeyId"] = self.s3.kms_key_id
        return extra

    def transfer_config(self, size: int):
        from boto3.s3.transfer import TransferConfig

        chunk = chunk_size(size, self.chunk_override)
        return TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk,
                              max_concurrency=4, use_threads=True)

    def head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise

    def check_object(self, key: str, size: int, sha256: str) -> None:
        head = self.head(key)
        if head is None:
            raise Failed(f"s3://{self.bucket}/{key}: not there after the upload")
        have_size = head.get("ContentLength")
        have_sha = (head.get("Metadata") or {}).get("sha256")
        if have_size != size or have_sha != sha256:
            raise Failed(f"s3://{self.bucket}/{key}: {have_size} bytes with sha256 {have_sha}, "
                         f"expected {size} bytes with sha256 {sha256}")

    def upload(self, path: Path, key: str, sha256: str, size: int) -> None:
        self.client.upload_file(str(path), self.bucket, key, ExtraArgs=self.extra_args(sha256),
                                Config=self.transfer_config(size))

    def put_via_temporary(self, path: Path, key: str, sha256: str, size: int) -> None:
        """Upload to tmp/<uuid>, check it, copy it server-side to ``key``, check that, delete
        the temporary key. On failure the temporary key and any multipart upload left under
        it are removed, and the error is raised again."""
        tmp = self.key("tmp", uuid.uuid4().hex)
        try:
            self.upload(path, tmp, sha256, size)
            self.check_object(tmp, size, sha256)
            self.client.copy({"Bucket": self.bucket, "Key": tmp}, self.bucket, key,
                             ExtraArgs={**self.extra_args(sha256),
                                        "MetadataDirective": "REPLACE"},
                             Config=self.transfer_config(size))
            self.check_object(key, size, sha256)
        except BaseException:
            self.cleanup_temporary(tmp)
            raise
        self.client.delete_object(Bucket=self.bucket, Key=tmp)

    def abort_multipart(self, prefix: str, older_than: datetime | None = None) -> int:
        """Abort unfinished multipart uploads under ``prefix`` (initiated before
        ``older_than``, when given)."""
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []) or []:
                if older_than is not None and upload.get("Initiated") and \
                        upload["Initiated"] >= older_than:
                    continue
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                   UploadId=upload["UploadId"])
                aborted += 1
        return aborted

    def cleanup_temporary(self, tmp: str) -> None:
        try:
            aborted = self.abort_multipart(tmp)
            self.client.delete_object(Bucket=self.bucket, Key=tmp)
            self.log.emit("cleanup", "ok", detail=f"{tmp}: temporary key removed"
                          + (f", {aborted} multipart upload(s) aborted" if aborted else ""))
        except Exception as exc:
            self.log.emit("cleanup", "failed",
                          detail=f"{tmp}: could not remove the temporary key or abort its "
                          f"multipart upload now (retention sweeps tmp/ later): "
                          f"{type(exc).__name__}: {exc}")

    def put_json(self, key: str, data: dict) -> None:
        body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        digest = hashlib.sha256(body).hexdigest()
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                               ContentType="application/json", **self.extra_args(digest))
        self.check_object(key, len(body), digest)

    def get_json(self, key: str) -> dict | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def list(self, prefix: str, delimiter: str | None = None):
        paginator = self.client.get_paginator("list_objects_v2")
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        for page in paginator.paginate(**kwargs):
            yield from page.get("Contents", []) or []

    def delete_keys(self, keys: list[str]) -> int:
        """Batched DeleteObjects, at most 1000 keys a call; Failed on any per-key error."""
        deleted = 0
        for batch in batches(sorted(keys)):
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch],
                                            "Quiet": True})
            errors = response.get("Errors") or []
            if errors:
                raise Failed(f"delete_objects: {len(errors)} key(s) not deleted, e.g. "
                             f"{errors[0].get('Key')}: {errors[0].get('Message')}")
            deleted += len(batch)
        return deleted

    def download(self, key: str, dest: Path, size: int) -> None:
        self.client.download_file(self.bucket, key, str(dest),
                                  Config=self.transfer_config(size))

    def entries(self) -> list[dict]:
        """Dumps in S3: published (a verified manifest), bad (its manifest marked bad by
        ``verify``) or unpublished (files without a manifest: an upload that did not
        finish)."""
        out: list[dict] = []
        groups: dict[tuple, list[dict]] = {}
        for obj in self.list(self.key("dumps") + "/"):
            rest = obj["Key"][len(self.key("dumps")) + 1:]
            match = re.match(r"^([^/]+)/(\d{8}T\d{6}Z)\.(dump|sql|json)$", rest)
            if match:
                kind = "globals" if match.group(1) == GLOBALS else "dump"
                groups.setdefault((kind, match.group(1), match.group(2)), []).append(
                    {**obj, "name": f"{match.group(2)}.{match.group(3)}"})
        for (kind, database, label), objects in sorted(groups.items(),
                                                       key=lambda kv: kv[0][2]):
            manifest_key = self.key("dumps", database, f"{label}.json")
            has_manifest = any(o["Key"] == manifest_key for o in objects)
            manifest = (self.get_json(manifest_key) if has_manifest else None) or {}
            entry = entry_record("s3", kind, database, label, manifest,
                           backup_state("s3", manifest))
            if not manifest:
                entry["size"] = sum(o.get("Size", 0) for o in objects)
            entry["keys"] = sorted(o["Key"] for o in objects)
            entry["manifest_key"] = manifest_key
            entry["location"] = f"s3://{self.bucket}/{manifest_key}"
            out.append(entry)
        return out


def open_store(cfg: Config, log: JobLog, conn=None, explicit: str | None = None,
               client=None) -> S3Store:
    """The S3 store of this cluster. Its system identifier: ``explicit``, else from SQL when
    connected, else pg_controldata on the data directory."""
    if cfg.s3 is None:
        raise ConfigError("no s3 section in the configuration")
    sysid = explicit or (sql_system_identifier(conn) if conn is not None else None) \
        or controldata_system_identifier(cfg)
    if not sysid:
        raise ConfigError(f"cannot tell the cluster's system identifier (no server, no "
                          f"readable {cfg.data_directory}): pass --system-identifier")
    return S3Store(cfg.s3, cfg.host, sysid, log, client=client)


def publish(store: S3Store, log: JobLog, files: list[tuple[Path, str, dict]],
            manifest_key: str, manifest: dict) -> None:
    """Each file to a temporary key, checked, copied to its key; then, only when every file
    is there, the manifest: what makes the backup published. Raises a logged Failed."""
    for path, key, meta in files:
        with log.stage("upload", detail=key) as info:
            store.put_via_temporary(path, key, meta["sha256"], meta["size"])
            info.bytes = meta["size"]
    with log.stage("publish", detail=manifest_key):
        for _path, key, meta in files:
            store.check_object(key, meta["size"], meta["sha256"])
        store.put_json(manifest_key, manifest)

