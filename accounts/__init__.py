"""Accounts: sign-up, log-in (with throttling), password reset and the outgoing mail queue.
May import nothing of Warren's other packages (tests/test_imports.py)."""
