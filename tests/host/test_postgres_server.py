"""The PostgreSQL server a deploy leaves behind: packages, cluster, service, socket, data dir."""


def test_server_packages_installed(host, settings):
    version = settings.postgres_version
    for name in (f"postgresql-{version}", f"postgresql-client-{version}", "postgresql-common"):
        assert host.package(name).is_installed, name


def test_debian_does_not_create_clusters_behind_our_back(host):
    conf = host.file("/etc/postgresql-common/createcluster.d/50-pginfra.conf")
    assert conf.exists
    assert "create_main_cluster = false" in conf.content_string
    assert (conf.user, conf.group, conf.mode) == ("root", "root", 0o644)


def test_cluster_present(host, settings, cluster, standby):
    listing = host.check_output("pg_lsclusters --no-header")
    rows = [line.split() for line in listing.splitlines()]
    ours = [r for r in rows if f"{r[0]}/{r[1]}" == cluster]
    assert ours, listing
    version, name, port, status, owner, data_dir = ours[0][:6]
    online = "online,recovery" if standby else "online"
    assert (int(port), status, owner) == (settings.postgres_port, online, "postgres")
    assert data_dir == f"/var/lib/postgresql/{version}/{name}"


def test_service_enabled_and_running(host, settings):
    unit = host.service(f"postgresql@{settings.postgres_version}-{settings.postgres_cluster}")
    assert unit.is_running
    assert unit.is_enabled
    assert host.service("postgresql").is_enabled
    assert host.file(
        f"/etc/postgresql/{settings.postgres_version}/{settings.postgres_cluster}/start.conf"
    ).content_string.strip().endswith("auto")


def test_port_listening(host, settings):
    assert host.socket(f"tcp://127.0.0.1:{settings.postgres_port}").is_listening


def test_data_directory_owned_by_postgres_0700(host, settings):
    data = host.file(
        f"/var/lib/postgresql/{settings.postgres_version}/{settings.postgres_cluster}"
    )
    assert data.is_directory
    assert (data.user, data.group, data.mode) == ("postgres", "postgres", 0o700)


def test_server_answers_with_the_right_version(psql, settings, standby):
    assert psql("SHOW server_version_num").startswith(str(settings.postgres_version))
    assert psql("SELECT pg_is_in_recovery()") == ("t" if standby else "f")


def test_cluster_created_with_data_checksums(psql, settings):
    expected = "on" if settings.postgres_data_checksums else "off"
    assert psql("SHOW data_checksums") == expected


def test_cluster_locale(psql, settings):
    assert psql("SELECT datcollate FROM pg_database WHERE datname = 'template1'") == (
        settings.postgres_locale
    )
