"""files/pginfra-migrate's parsing; its database behaviour is proven in tests/e2e."""

from pathlib import Path

from pginfra.sql_bundles import runner

migrate = runner()


def test_split_honours_quotes_dollar_quotes_and_comments():
    text = ("-- leading; comment\nCREATE TABLE a (t text DEFAULT 'x;y');\n"
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $body$;\n"
            "/* block; */ SELECT \"we;ird\" FROM a;\n\n-- only a comment;\n")
    parts = migrate.split_statements(text)
    assert [line for line, _ in parts] == [2, 3, 4]  # the statement, not its comment
    assert parts[1][1].endswith("$body$ SELECT 1; $body$")
    assert parts[2][1].startswith("/* block; */ SELECT")


def test_directives_only_in_leading_comments(tmp_path):
    m = migrate.Migration("b", Path("010_x.sql"),
                          "-- pginfra: no-transaction\n-- pginfra: repeatable\nSELECT 1;\n")
    assert m.repeatable and not m.transactional
    later = migrate.Migration("b", Path("010_x.sql"), "SELECT 1;\n-- pginfra: repeatable\n")
    assert not later.repeatable and later.transactional


def test_bundle_skips_revert_and_preflight_files(tmp_path):
    for name in ("020_b.sql", "010_a.sql", "010_a.revert.sql", "010_a.preflight.sql"):
        (tmp_path / name).write_text("SELECT 1;\n")
    names = [m.name for m in migrate.load_bundle(tmp_path)]
    assert names == ["010_a.sql", "020_b.sql"]
    assert migrate.load_bundle(tmp_path)[0].sibling("revert").name == "010_a.revert.sql"


def test_concurrent_index_names_are_found():
    match = migrate.CONCURRENT_INDEX.search(
        "create unique index concurrently if not exists public.users_email_key on users (e)")
    assert match.groups() == ("public", "users_email_key")
