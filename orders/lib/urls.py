"""URLs as the customer is shown them (the order page, the API)."""

from urllib.parse import urlsplit, urlunsplit


def without_password(url: str) -> str:
    """`url` with any password in its user info dropped."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
