"""Unit tests run in one process. test_inventories imports pyinfra's CLI, which runs gevent's
monkey.patch_all(); boto3 set up before that patch recurses forever creating SSL contexts.
Patch first, as pyinfra asks of code that uses it as a library."""

from gevent import monkey

monkey.patch_all()
