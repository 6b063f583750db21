"""openimagine: a self-hostable server for the Grok Imagine video API."""

__version__ = "0.1.0"
