"""Persistence: tables (``models``), connections (``db``) and migrations (``migrate``)."""
