"""The shop's orders app: one Django app in packages by area (docs/orders.md, "Layout").
The app root (apps, checks) may import orders.lib; each area's __init__ says what it may import."""
