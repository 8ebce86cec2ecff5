"""Plain helpers below the models: Fernet secrets (encryption), wake-ups on commit (wakeup), urls.
May import nothing of Warren: orders.models builds on these, so they cannot use a model."""
