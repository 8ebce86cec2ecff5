"""Customer pages by area (orders, billing, metrics, console, catalogue) and their urls.
May import every area of orders but admin and management, plus store and vmbackend's protocol."""
