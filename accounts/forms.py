from typing import Any

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm

from accounts import throttle


class SignupForm(UserCreationForm):
    """Username, email and password: the email is where password resets and receipts go.

    An email already in use is accepted (and its owner told by mail): refusing it would tell
    anyone which addresses have an account here. See docs/accounts.md.
    """

    email = forms.EmailField(max_length=254, help_text="For receipts and password resets.")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")

    def clean_email(self) -> str:
        email: str = self.cleaned_data["email"]
        return email.strip()


class ThrottledLoginMixin:
    """Refuses logins while the username or the client's address is locked out; counts failures."""

    request: Any
    cleaned_data: dict[str, Any]

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        address = throttle.client_address(self.request) if self.request else ""
        wait = throttle.seconds_locked(username=username, address=address)
        if wait:
            raise forms.ValidationError(
                "Too many failed logins. Try again in %(wait)s.",
                code="throttled",
                params={"wait": throttle.wait_message(wait)},
            )
        try:
            # The form this is mixed into (AuthenticationForm) has clean(); the mixin's base, object, not.
            cleaned: dict[str, Any] = super().clean()  # type: ignore[misc]
        except forms.ValidationError:
            throttle.record_failure(username=username, address=address)
            raise
        throttle.record_success(username=username, address=address)
        return cleaned


class ThrottledAuthenticationForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass
