"""``python -m openimagine`` is the ``openimagine`` command."""

from openimagine.cli import app

app(prog_name="openimagine")
