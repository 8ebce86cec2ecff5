"""The account page of API tokens: list, create (the token shown once, on the answer to the
POST, never stored), revoke. Thin: orders/api/tokens.py does the work."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from orders.api import tokens
from orders.api.access import SignedInRequest
from orders.models import ApiToken


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def token_list(request: SignedInRequest) -> HttpResponse:
    new_token = ""
    status = 200
    if request.method == "POST":
        try:
            token, new_token = tokens.create_token(
                user=request.user,
                name=request.POST.get("name", ""),
                scope=request.POST.get("scope", ""),
            )
        except tokens.TokenError as exc:
            messages.error(request, str(exc))
            status = 400
    ctx = {
        "tokens": tokens.active_tokens(request.user),
        "new_token": new_token,
        "scopes": ApiToken.Scope.choices,
    }
    # never_cache: no-store, as the new token is in this answer, once.
    return render(request, "orders/api_tokens.html", ctx, status=status)


@login_required
@require_POST
def revoke(request: SignedInRequest, token_id: int) -> HttpResponse:
    if tokens.revoke_token(user=request.user, token_id=token_id):
        messages.success(request, "Token revoked: it no longer works.")
    return redirect("tokens:list")
