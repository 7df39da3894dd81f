from pginfra.roles import (
    check_databases,
    check_roles,
    plan_database_objects,
    plan_databases,
    plan_roles,
    wanted_verifiers,
)
from pginfra.scram import make_verifier


def current_role(**kw):
    role = {"login": True, "superuser": False, "createdb": False, "createrole": False,
            "inherit": True, "connection_limit": -1, "password": None, "member_of": []}
    role.update(kw)
    return role


def test_new_role_is_created_with_a_verifier_never_the_password():
    verifiers = wanted_verifiers({"app": "s3cret-pass"}, {})
    sql = plan_roles([{"name": "app", "login": True}], {}, verifiers)
    assert sql[0] == ('CREATE ROLE "app" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE '
                      "INHERIT CONNECTION LIMIT -1")
    assert sql[1].startswith("ALTER ROLE \"app\" PASSWORD 'SCRAM-SHA-256$")
    assert "s3cret-pass" not in " ".join(sql)


def test_converged_role_needs_nothing():
    verifier = make_verifier("pw", "app")
    current = {"app": current_role(password=verifier, connection_limit=5, member_of=["grp"]),
               "grp": current_role(login=False),
               "postgres": current_role(superuser=True, password=make_verifier("root"))}
    wanted = [{"name": "grp"},
              {"name": "app", "login": True, "connection_limit": 5, "member_of": ["grp"]}]
    verifiers = wanted_verifiers({"app": "pw", "postgres": "root"}, current)
    assert verifiers["app"] == verifier  # still matches: kept, not recomputed
    assert plan_roles(wanted, current, verifiers) == []


def test_attribute_password_and_membership_changes():
    current = {"app": current_role(password=make_verifier("old"), member_of=["grp"],
                                   inherit=False),
               "grp": current_role(login=False)}
    wanted = [{"name": "grp"}, {"name": "app", "login": True, "connection_limit": 7}]
    sql = plan_roles(wanted, current, wanted_verifiers({"app": "new"}, current))
    assert 'ALTER ROLE "app" WITH INHERIT CONNECTION LIMIT 7' in sql
    assert any(s.startswith('ALTER ROLE "app" PASSWORD') for s in sql)
    assert 'REVOKE "grp" FROM "app"' in sql


def test_databases_plan_revokes_public_and_grants_listed_roles():
    sql = plan_databases([{"name": "app", "owner": "own", "connect": ["app"]}], {})
    assert sql == ['CREATE DATABASE "app" OWNER "own"',
                   'REVOKE CONNECT, TEMPORARY ON DATABASE "app" FROM PUBLIC',
                   'GRANT CONNECT ON DATABASE "app" TO "app"']
    converged = {"app": {"owner": "own", "connect": ["own", "app"]}}
    assert plan_databases([{"name": "app", "owner": "own", "connect": ["app"]}], converged) == []
    extra = {"app": {"owner": "own", "connect": ["own", "app", "old"]}}
    assert plan_databases([{"name": "app", "owner": "own", "connect": ["app"]}], extra) == [
        'REVOKE CONNECT ON DATABASE "app" FROM "old"']


def test_database_objects():
    fresh = plan_database_objects([], {})
    assert "CREATE EXTENSION IF NOT EXISTS \"pg_stat_statements\"" in fresh
    assert "REVOKE SELECT ON pg_stat_statements FROM PUBLIC" in fresh
    assert "GRANT SELECT ON pg_stat_statements TO pg_read_all_stats" in fresh
    assert "REVOKE USAGE ON SCHEMA public FROM PUBLIC" in fresh
    done = {"public_create": False, "extensions": ["pg_stat_statements", "plpgsql"],
            "stats_public": False, "stats_granted": True,
            "usage_roles": ["pg_database_owner", "app"]}
    assert plan_database_objects([], done) == []
    assert plan_database_objects([], done, ["app"]) == []
    assert plan_database_objects([], done, ["app", "reports"]) == [
        'GRANT USAGE ON SCHEMA public TO "reports"']


def test_validation_messages():
    assert "reserved" in check_roles([{"name": "postgres"}])
    assert "unknown key(s) pasword" in check_roles([{"name": "app", "pasword": "x"}])
    assert "not in postgres_roles" in check_roles([{"name": "a", "member_of": ["b"]}])
    assert "connection_limit" in check_roles([{"name": "a", "connection_limit": "9"}])
    assert check_roles([{"name": "a", "login": True, "member_of": ["pg_monitor"]}]) is None
    assert "name and owner" in check_databases([{"name": "x"}])
    assert "managed by PostgreSQL" in check_databases([{"name": "postgres", "owner": "x"}])


def test_roles_are_refused_before_anything_changes():
    assert "app is already role 1" in check_roles([{"name": "app", "login": True},
                                                   {"name": "app"}])
    assert "a member of itself" in check_roles([{"name": "a", "member_of": ["a"]}])
    assert check_roles([{"name": "a", "member_of": ["b"]}, {"name": "b", "member_of": ["c"]},
                        {"name": "c", "member_of": ["a"]}]) == \
        "member_of makes a cycle: a -> b -> c -> a"
    for reserved in ("public", "none", "current_user", "session_user", "pg_anything"):
        assert "reserved" in check_roles([{"name": reserved}]), reserved
    message = check_roles([{"name": "a", "connection_limit": 10**12}])
    assert "connection_limit must be -1 (no limit) to 10000, got 1000000000000" in message
    assert check_roles([{"name": "a", "connection_limit": 10000}]) is None
    assert "lower-case letters, digits and underscores" in check_roles([{"name": "d$home"}])


def test_databases_are_refused_before_anything_changes():
    assert "app is already database 1" in check_databases(
        [{"name": "app", "owner": "a"}, {"name": "app", "owner": "b"}])
    assert "lower-case letters, digits and underscores" in check_databases(
        [{"name": "d$home", "owner": "a"}])


def test_memberships_follow_every_role_whatever_the_order():
    wanted = [{"name": "app", "login": True, "member_of": ["late_group"]},
              {"name": "late_group"}]
    sql = plan_roles(wanted, {}, {})
    assert sql.index('GRANT "late_group" TO "app"') > sql.index(
        'CREATE ROLE "late_group" WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT '
        "CONNECTION LIMIT -1")
    assert sql[-1] == 'GRANT "late_group" TO "app"'
