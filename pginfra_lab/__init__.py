"""pginfra's rehearsal lab, apart from the runtime package: rehearsal hosts booted on this
machine (``rehearsal``, behind ``pginfra rehearsal``), the rehearsal inventory's hosts
(``inventory``) and a local S3 endpoint for tests and benchmarks (``s3_local``, which needs
moto from the test extra). Nothing in ``pginfra`` imports it but the ``rehearsal`` command."""
