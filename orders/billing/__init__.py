"""Money: Checkout, the offline payment page, Stripe webhooks, refunds and cancellation.
May import orders.core, orders.models, orders.lib, store and vmbackend's protocol."""
