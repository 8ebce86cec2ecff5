"""Plain helpers below the models: Fernet secrets, wake-ups on commit, URLs, customer-safe reasons.
May import nothing of Warren: orders.models builds on these, so they cannot use a model."""
