"""The owner's console (restart, rotate the password, change plan): requests, outcomes, page.
May import orders.billing, core, models and lib, store and vmbackend's protocol."""
