"""The service layer: accounts and keys, the credit ledger, and tasks."""
