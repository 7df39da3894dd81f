"""The S3 keys from the secrets source, checked against the bucket from the control machine
before any operation: a wrong endpoint, bucket, certificate or key is a clear error naming the
host, not a failed backup later. Used by the repository step (pgBackRest's repository 2) and
the backups step (the dumps' copies).

    keys = s3_keys(settings, "db1")   # ("AKIA...", "...") or None: the host's instance profile
"""

from __future__ import annotations

from pathlib import Path

from pginfra.secrets import password_for
from pginfra.settings import Settings, SettingsError

# The secrets source holds the S3 keys under these names (or PGINFRA_PASSWORD_S3_...).
S3_KEY_NAMES = ("s3_access_key_id", "s3_secret_access_key")
_checked: set[tuple] = set()


def ca_file(settings: Settings, host_name: str) -> Path | None:
    """backup_s3_ca_file on the control machine, or None; missing is an error."""
    if not settings.backup_s3_ca_file:
        return None
    path = Path(settings.backup_s3_ca_file).expanduser()
    if not path.is_file():
        raise SettingsError(f"{host_name}: backup_s3_ca_file: {path} not found on the control "
                            "machine; nothing was changed")
    return path


def check_s3(settings: Settings, key_id: str, secret: str, host_name: str,
             timeout: float = 5) -> None:
    """HeadBucket with the keys the host will use (once per process and bucket)."""
    import boto3
    import botocore.config
    import botocore.exceptions

    ca = ca_file(settings, host_name)
    seen = (settings.backup_s3_bucket, settings.backup_s3_endpoint_url, str(ca), key_id, secret)
    if seen in _checked:
        return
    client = boto3.client(
        "s3", region_name=settings.backup_s3_region,
        endpoint_url=settings.backup_s3_endpoint_url or None,
        aws_access_key_id=key_id, aws_secret_access_key=secret,
        verify=str(ca) if ca else True,
        config=botocore.config.Config(connect_timeout=timeout, read_timeout=timeout,
                                      retries={"max_attempts": 1}))
    where = settings.backup_s3_endpoint_url or f"AWS ({settings.backup_s3_region})"
    try:
        client.head_bucket(Bucket=settings.backup_s3_bucket)
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise SettingsError(
            f"{host_name}: backup_s3_bucket {settings.backup_s3_bucket!r} at {where}: "
            f"HeadBucket failed ({code}); check the bucket name and the S3 keys; nothing was "
            "changed") from None
    except botocore.exceptions.SSLError as exc:
        raise SettingsError(
            f"{host_name}: backup_s3_endpoint_url {where}: its TLS certificate does not verify "
            f"({exc}); set backup_s3_ca_file to the CA that signs it; nothing was changed"
        ) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise SettingsError(
            f"{host_name}: backup_s3_endpoint_url {where} cannot be reached: {exc}; nothing "
            "was changed") from None
    _checked.add(seen)


def s3_keys(settings: Settings, host_name: str) -> tuple[str, str] | None:
    """(key id, secret) when the secrets source has both S3 keys, checked against the bucket;
    None without S3, or to rely on the host's instance profile. Half a pair is an error."""
    if not settings.backup_s3_bucket:
        return None
    key_id, secret = (password_for(name) for name in S3_KEY_NAMES)
    if bool(key_id) != bool(secret):
        raise SettingsError(
            f"{host_name}: the secrets source has only one of {', '.join(S3_KEY_NAMES)}; give "
            "both, or neither to use the host's environment or instance profile; nothing was "
            "changed")
    if not key_id:
        ca_file(settings, host_name)
        return None
    check_s3(settings, key_id, secret, host_name)
    return key_id, secret


def credentials_text(keys: tuple[str, str] | None) -> str | None:
    """The dumps' boto3 credentials file, or None."""
    if not keys:
        return None
    return f"[default]\naws_access_key_id = {keys[0]}\naws_secret_access_key = {keys[1]}\n"
