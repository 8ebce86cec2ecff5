"""The customer API (/api/v1/), its tokens and their account page: thin over the same services.
May import every area of orders but web, admin and management, plus store and vmbackend's protocol."""
