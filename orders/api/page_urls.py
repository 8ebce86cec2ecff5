from django.urls import path

from orders.api import token_page

app_name = "tokens"

urlpatterns = [
    path("", token_page.token_list, name="list"),
    path("<int:token_id>/revoke/", token_page.revoke, name="revoke"),
]
