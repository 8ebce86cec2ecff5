import logging

from django.contrib.auth import get_user_model, login
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import User
from django.core.mail import send_mail
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from accounts.forms import SignupForm, ThrottledAuthenticationForm

log = logging.getLogger(__name__)


class LoginView(auth_views.LoginView):
    """Django's login with the failed-login throttle; a locked-out attempt answers 429."""

    authentication_form = ThrottledAuthenticationForm

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_invalid(form)
        if form.has_error("__all__", "throttled"):
            response.status_code = 429
        return response


def _safe_next(request: HttpRequest) -> str:
    """The `next` parameter if it points back into this site, else the pricing page."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return "store:pricing"  # a new customer has no orders yet: show them what to buy


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect(_safe_next(request))

    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        # One transaction: the account and the mail to the address's owners (queued, sent by the
        # mail worker, accounts/mail_queue.py) exist together or not at all.
        with transaction.atomic():
            owners = list(get_user_model().objects.filter(email__iexact=form.cleaned_data["email"]))
            user = form.save()
            if owners:
                _tell_owners_of_a_new_account(request, owners, user)
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect(_safe_next(request))

    ctx = {"form": form, "next": request.POST.get("next") or request.GET.get("next", "")}
    return render(request, "registration/signup.html", ctx)


def _tell_owners_of_a_new_account(request: HttpRequest, owners: list[User], new_user: User) -> None:
    """Someone signed up with an address that already has an account: its owner hears of it by
    mail (the page says nothing, and answers as fast, so signup does not reveal which addresses
    are registered)."""
    context = {
        "new_username": new_user.get_username(),
        "login_url": request.build_absolute_uri(reverse("login")),
        "reset_url": request.build_absolute_uri(reverse("password_reset")),
    }
    for owner in owners:
        body = render_to_string("registration/email_in_use_email.txt", {**context, "user": owner})
        # Queued, not sent (settings.EMAIL_BACKEND): the answer takes as long as for a new address.
        send_mail("Another Warren account uses your email address", body, None, [owner.email])
    log.info("event=signup_email_in_use new_user_id=%s owners=%d", new_user.pk, len(owners))
