"""Plain helpers below the models: Fernet secrets (encryption) and wake-ups on commit (wakeup).
May import nothing of Warren: orders.models builds on these, so they cannot use a model."""
