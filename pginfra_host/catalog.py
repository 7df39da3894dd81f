"""What dumps and backups exist where, across the local directory, pgBackRest and S3: marking a
dump bad, publishing a verified one, and the ``list`` job of both backup programs.
"""

from __future__ import annotations

import json
from pathlib import Path

from pginfra_host.backup_config import Config
from pginfra_host.dumps import bad_mark, local_entries, local_manifest_path
from pginfra_host.pgbr import backup_summary, pgbackrest_info, repo_backups
from pginfra_host.runner import Failed, JobLog
from pginfra_host.s3store import S3Store, open_store, publish
from pginfra_host.util import human, iso, utcnow, write_json


def mark_bad(cfg: Config, entry: dict, reason: str, store: S3Store | None = None) -> str:
    """Record in the entry's own manifest that ``verify`` found it broken: local, the local
    manifest; in S3, the published manifest, rewritten with ``bad`` (so it is no longer
    published, and no longer chosen by anything), and the local copy's note of its
    publication (``published.bad``) when this host holds it. Returns where it was written."""
    mark = bad_mark(reason, entry["where"])
    if entry["where"] == "local":
        path = local_manifest_path(entry)
        write_json(path, {**entry["manifest"], "bad": mark})
        entry["manifest"] = {**entry["manifest"], "bad": mark}
        entry["state"], entry["error"], entry["bad"] = "bad", reason, mark
        return str(path)
    store.put_json(entry["manifest_key"], {**entry["manifest"], "bad": mark})
    entry["manifest"] = {**entry["manifest"], "bad": mark}
    entry["state"], entry["error"], entry["bad"] = "bad", reason, mark
    for local in local_entries(cfg):
        published = local["manifest"].get("published")
        if (local["kind"], local["database"], local["label"]) == \
                (entry["kind"], entry["database"], entry["label"]) and \
                isinstance(published, dict) and \
                str(local["manifest"].get("system_identifier")) == store.system_identifier:
            write_json(local_manifest_path(local),
                       {**local["manifest"], "published": {**published, "bad": mark}})
    return entry["location"]


def publish_entry(cfg: Config, store: S3Store, log: JobLog, entry: dict) -> None:
    """Publish a verified local dump and note it in its local manifest."""
    manifest = dict(entry["manifest"])
    manifest.pop("published", None)
    directory = Path(entry["location"]).parent
    files = [(directory / name, store.key("dumps", entry["database"], name), meta)
             for name, meta in sorted(manifest["files"].items())]
    manifest_key = store.key("dumps", entry["database"], f"{entry['label']}.json")
    local_manifest = directory / f"{entry['label']}.json"
    publish(store, log, files, manifest_key, manifest)
    manifest["published"] = {"time": iso(utcnow()),
                             "url": f"s3://{store.bucket}/{manifest_key}"}
    write_json(local_manifest, manifest)
    entry["manifest"], entry["published"], entry["published_bad"] = manifest, True, None


def print_table(rows: list[tuple]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])


def job_list(cfg: Config, args, log: JobLog) -> dict:
    """pgBackRest's backups in each configured repository (info) and the dumps, here and in
    S3 (with their state)."""
    backups, errors = [], {}
    try:
        with log.stage("pgbackrest-info") as info:
            stanza = pgbackrest_info(cfg)
            for repo in stanza.get("repo") or []:
                if repo["status"]["code"] != 0:
                    errors[f"repo{repo['key']}"] = repo["status"]["message"]
            for repo in cfg.pgbackrest.repos:
                backups += [backup_summary(b) for b in repo_backups(stanza, repo)]
            info.detail = f"{len(backups)} backup(s)"
    except Failed as exc:
        errors["pgbackrest"] = str(exc)
    dumps = local_entries(cfg)
    if cfg.s3 is not None and not args.local:
        try:
            with log.stage("s3-list") as info:
                store = open_store(cfg, log)
                found = store.entries()
                info.detail = f"s3://{store.bucket}/{store.root}: {len(found)} dump(s)"
                dumps += found
        except Failed as exc:
            errors["s3"] = str(exc)
    dumps.sort(key=lambda e: (e["label"], e["where"], e["kind"], e["database"] or ""))
    public = [{k: v for k, v in e.items() if k not in ("manifest", "paths", "keys")}
              for e in dumps]
    if args.json:
        print(json.dumps({"pgbackrest": backups, "dumps": public, "errors": errors},
                         indent=2, default=str))
        return {"count": len(backups) + len(dumps)}
    rows = [("REPO", "TYPE", "LABEL", "STOPPED", "SIZE", "IN REPO")]
    rows += [(f"repo{b['repo']}", b["type"], b["label"], b["stop"][:19], human(b["size"]),
              human(b["repo_size"])) for b in backups]
    print_table(rows)
    print()
    rows = [("WHERE", "KIND", "DATABASE", "LABEL", "ENDED", "SIZE", "STATE")]
    for e in public:
        state = e["state"]
        if e["state"] == "bad" and e.get("bad"):
            state += f" since {str(e['bad'].get('time'))[:19]}"
        if e["where"] == "local" and e["published"]:
            state += ", published" + (" copy bad" if e.get("published_bad") else "")
        if e.get("error"):
            state += f" ({e['error'][:100 if e['state'] == 'bad' else 60]})"
        elif e.get("published_bad"):
            state += f" ({str(e['published_bad'].get('reason'))[:100]})"
        rows.append((e["where"], e["kind"], e["database"] or "-", e["label"],
                     (e["end_time"] or "-")[:19], human(e["size"]), state))
    print_table(rows)
    for what, error in errors.items():
        print(f"({what}: {error})")
    return {"count": len(backups) + len(dumps)}

