from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from django.contrib import admin

        from accounts.forms import ThrottledAdminAuthenticationForm

        # The admin's own login page is a second door: same throttle.
        admin.site.login_form = ThrottledAdminAuthenticationForm
