"""pginfra's host side: the programs that run on a database host (cron, the deploy, an
operator), one package for the host's own Python 3 and Debian's python3-psycopg and
python3-boto3. It imports nothing else: never pyinfra, never the control package ``pginfra``,
which imports it (to plan with the programs' own code and validate what it will write).

The deploy's programs step copies this package into the host python3's site directory
(``/usr/local/lib/python3.11/dist-packages/pginfra_host``) and writes, for each program the host
runs, a four-line entry point in ``/usr/local/lib/pginfra/`` that calls the module's
``main()`` (``layout.PROGRAMS`` lists them).
"""
