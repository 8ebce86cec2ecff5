"""The Django project (settings, urls) and the plan catalogue (Plan, WaitlistEntry).
May import vmbackend's protocol (the image versions); never orders (tests/test_imports.py)."""
