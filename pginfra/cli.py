"""The ``pginfra`` command: ``pginfra rehearsal ...``, ``pginfra vm ...``, ``pginfra settings``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rehearsal"]:
        from pginfra_lab.rehearsal import main as rehearsal_main

        return rehearsal_main(argv[1:])
    if argv[:1] == ["vm"]:
        from pginfra_lab.vm import main as vm_main

        return vm_main(argv[1:])
    if argv[:1] == ["settings"]:
        from pginfra.server_config import parameters_reference
        from pginfra.settings import reference

        sys.stdout.write(reference() + parameters_reference())
        return 0
    if argv[:2] == ["secrets", "init"] and len(argv) > 2:
        from pginfra.secrets import generate_missing, secrets_file

        made = generate_missing(argv[2:])
        for role in made:
            print(f"secrets: a random password for {role} is in {secrets_file()}")
        return 0
    print(
        "usage: pginfra rehearsal {up [--hosts N] | down | status | ssh NAME}\n"
        "       pginfra vm {box | probe | up [MACHINE...] | down [MACHINE...]}\n"
        "       pginfra settings      print the settings reference\n"
        "       pginfra secrets init ROLE...   random passwords for roles that have none",
        file=sys.stderr,
    )
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
